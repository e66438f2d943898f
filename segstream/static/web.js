// The live view: one EventSource (/api/stream) pushes a snapshot a second; the history and the
// transitions are fetched when the event-time watermark moves. Nothing here writes anything.
(function () {
  "use strict";
  var ORDER = ["Champions", "Loyal", "Potential Loyalists", "New Customers", "Promising", "Need Attention",
    "About to Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost"];
  var STATUSES = ["active", "at_risk", "churned"];
  var STATUS_COLORS = { "active": "#4caf50", "at_risk": "#f59e0b", "churned": "#b91c1c" };
  // one colour per segment in every chart: greens are good, reds need action, greys are gone
  var COLORS = { "Champions": "#1a7f37", "Loyal": "#4caf50", "Potential Loyalists": "#8bc34a", "New Customers": "#2f81f7",
    "Promising": "#7cb7ff", "Need Attention": "#f0b429", "About to Sleep": "#f59e0b", "At Risk": "#e4572e",
    "Can't Lose Them": "#b91c1c", "Hibernating": "#9aa4b2", "Lost": "#5b6472" };
  var meanings = {};
  var charts = {};
  var feed = [];
  var lastWatermark = null;
  var windowChosen = false;
  var fmt = new Intl.NumberFormat("en");

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function row(cells, numeric) {
    var tr = el("tr");
    cells.forEach(function (c, i) {
      var td = el("td", numeric && numeric.indexOf(i) >= 0 ? { class: "n" } : {});
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "–" : String(c);
      tr.appendChild(td);
    });
    return tr;
  }
  function fill(tbody, rows) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function when(iso) { return iso ? iso.replace("T", " ").replace(/(\+00:00|Z)$/, " UTC") : "–"; }
  function chart(id) {
    if (!charts[id]) {
      var node = $(id);
      charts[id] = echarts.init(node, null, { renderer: "svg" });
      charts[id].on("finished", function () { node.dataset.rendered = "1"; });
    }
    return charts[id];
  }
  function json(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    });
  }
  function sorted(names) {
    return names.slice().sort(function (a, b) {
      var i = ORDER.indexOf(a), j = ORDER.indexOf(b);
      return (i < 0 ? 99 : i) - (j < 0 ? 99 : j) || (a < b ? -1 : 1);
    });
  }

  // ---- segments now --------------------------------------------------------------------------
  function showSegments(segments) {
    var names = sorted(ORDER.concat(Object.keys(segments).filter(function (s) { return ORDER.indexOf(s) < 0; })));
    var total = names.reduce(function (t, s) { return t + (segments[s] || 0); }, 0);
    $("total").textContent = fmt.format(total) + " customers";
    $("total").dataset.total = String(total);
    fill($("segment-table").tBodies[0], names.filter(function (s) { return segments[s]; }).map(function (s) {
      var tr = row([s, fmt.format(segments[s]), (100 * segments[s] / total).toFixed(1) + "%"], [1, 2]);
      tr.dataset.segment = s;
      tr.dataset.count = String(segments[s]);
      tr.title = meanings[s] || "";
      return tr;
    }));
    chart("chart-now").setOption({
      animation: false,
      grid: { left: 130, right: 30, top: 10, bottom: 30 },
      tooltip: {
        trigger: "item",
        formatter: function (p) { return "<b>" + p.name + "</b>: " + fmt.format(p.value) + " customers<br>" + (meanings[p.name] || ""); }
      },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: names.slice().reverse() },
      series: [{ type: "bar", data: names.slice().reverse().map(function (s) {
        return { value: segments[s] || 0, itemStyle: { color: COLORS[s] || "#4a6fd1" } };
      }) }]
    });
  }

  // ---- history and transitions (fetched when the watermark moves) ------------------------------
  function showHistory(points) {
    var names = sorted(Object.keys(points.reduce(function (all, p) { Object.assign(all, p.segments); return all; }, {})));
    chart("chart-history").setOption({
      animation: false,
      legend: { top: 0, type: "scroll" },
      grid: { left: 60, right: 20, top: 40, bottom: 40 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: points.map(function (p) { return p.day; }) },
      yAxis: { type: "value", name: "customers" },
      series: names.map(function (s) {
        return { name: s, type: "line", stack: "all", areaStyle: {}, showSymbol: false, color: COLORS[s],
          data: points.map(function (p) { return p.segments[s] || 0; }) };
      })
    }, true);
  }
  function showFlows(result) {
    var links = result.transitions.filter(function (t) { return t.to; }).map(function (t) {
      return { source: "from " + (t.from || "(new customer)"), target: "to " + t.to, value: t.customers };
    });
    var nodes = {};
    links.forEach(function (l) { nodes[l.source] = 1; nodes[l.target] = 1; });
    var moved = links.reduce(function (n, l) { return n + l.value; }, 0);
    $("window-note").textContent = fmt.format(moved) + " moves from " + result.start + " to " + result.end +
      (links.length ? "" : ": none in these days");
    // from/to prefixes keep the graph two-sided: A->B and B->A are not a cycle
    chart("chart-flows").setOption({
      animation: false,
      tooltip: { trigger: "item" },
      series: [{ type: "sankey", left: 10, right: 150, data: Object.keys(nodes).map(function (n) {
          var segment = n.replace(/^(from|to) /, "");
          return { name: n, itemStyle: { color: COLORS[segment] || "#9aa4b2" } };
        }),
        lineStyle: { color: "source", opacity: 0.35 },
        links: links, emphasis: { focus: "adjacency" }, label: { fontSize: 11 } }]
    }, true);
  }
  function refreshWindow() {
    json("api/transitions?from=" + $("from").value + "&to=" + $("to").value).then(function (r) {
      if (r.status === 200) showFlows(r.body); else $("window-note").textContent = r.body.error;
    });
  }
  // The history and the window's transitions are read from one Redis hash per event-day: refetch
  // them at most every HISTORY_EVERY_MS while the watermark moves (a fast replay moves it every
  // second), and once more after it stops.
  var HISTORY_EVERY_MS = 3000, lastFetch = 0, pending = null;
  function onWatermark(watermark) {
    if (!watermark || watermark === lastWatermark) return;
    lastWatermark = watermark;
    var wait = lastFetch + HISTORY_EVERY_MS - Date.now();
    if (wait > 0) {
      if (!pending) pending = setTimeout(function () { pending = null; fetchHistory(lastWatermark); }, wait);
      return;
    }
    fetchHistory(watermark);
  }
  function fetchHistory(watermark) {
    lastFetch = Date.now();
    json("api/segments/history").then(function (r) { if (r.status === 200) showHistory(r.body); });
    json("api/analytics/cohorts").then(function (r) { if (r.status === 200) showCohorts(r.body); });
    json("api/analytics/weekday-hour").then(function (r) { if (r.status === 200) showWeekday(r.body); });
    json("api/analytics/geography").then(function (r) { if (r.status === 200) showStates(r.body); });
    json("api/analytics/segment-revenue").then(function (r) { if (r.status === 200) showSegmentRevenue(r.body); });
    json("api/analytics/daily").then(function (r) { if (r.status === 200) { daily = r.body; showDaily(); } });
    if (!windowChosen) {
      var end = new Date(watermark);
      var start = new Date(end.getTime() - 29 * 86400e3);
      $("from").value = start.toISOString().slice(0, 10);
      $("to").value = end.toISOString().slice(0, 10);
    }
    refreshWindow();
  }
  $("window").addEventListener("submit", function (e) { e.preventDefault(); windowChosen = true; refreshWindow(); });

  // ---- analytics read models ------------------------------------------------------------------
  var money = function (v) { return fmt.format(Math.round(v * 100) / 100); };
  var COHORT_MONTHS = 13;
  function showCohorts(rows) {
    var cells = [], max = 0;
    rows.forEach(function (r, y) {
      r.active.slice(0, COHORT_MONTHS).forEach(function (a, k) {
        var share = a / r.customers;
        if (k > 0) max = Math.max(max, share);  // month 0 is 100% by definition: scale on the rest
        cells.push([k, y, Math.round(share * 10000) / 100, a, r.revenue[k]]);
      });
    });
    chart("chart-cohorts").setOption({
      animation: false,
      grid: { left: 130, right: 20, top: 10, bottom: 60 },
      tooltip: { formatter: function (p) {
        var r = rows[p.value[1]];
        return "<b>" + r.cohort + "</b> (" + fmt.format(r.customers) + " customers), month " + p.value[0] + ":<br>" +
          fmt.format(p.value[3]) + " bought (" + p.value[2] + "%), revenue " + money(p.value[4]);
      } },
      xAxis: { type: "category", name: "months since the first purchase", nameLocation: "middle", nameGap: 30,
        data: Array.from({ length: COHORT_MONTHS }, function (_, k) { return String(k); }) },
      yAxis: { type: "category", inverse: true, data: rows.map(function (r) { return r.cohort + " (" + fmt.format(r.customers) + ")"; }) },
      visualMap: { min: 0, max: Math.max(Math.ceil(max * 100), 1), dimension: 2, calculable: true, orient: "horizontal",
        left: "center", bottom: 0, itemHeight: 120, text: ["% buying", ""], inRange: { color: ["#f7fbff", "#08519c"] } },
      series: [{ type: "heatmap", data: cells, label: { show: false } }]
    }, true);
  }
  var DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
  function showWeekday(grid) {
    var cells = [], max = 0;
    grid.orders.forEach(function (hours, d) { hours.forEach(function (n, h) { max = Math.max(max, n); cells.push([h, d, n, grid.revenue[d][h]]); }); });
    $("weekday-zone").textContent = "hours of " + grid.timezone;
    chart("chart-weekday").setOption({
      animation: false,
      grid: { left: 50, right: 20, top: 10, bottom: 60 },
      tooltip: { formatter: function (p) { return DAYS[p.value[1]] + " " + p.value[0] + ":00–" + p.value[0] + ":59: " +
        fmt.format(p.value[2]) + " purchases, revenue " + money(p.value[3]); } },
      xAxis: { type: "category", data: Array.from({ length: 24 }, function (_, h) { return String(h); }) },
      yAxis: { type: "category", inverse: true, data: DAYS },
      visualMap: { min: 0, max: Math.max(max, 1), dimension: 2, orient: "horizontal", left: "center", bottom: 0,
        itemHeight: 120, text: ["purchases", ""], inRange: { color: ["#fff7ec", "#b30000"] } },
      series: [{ type: "heatmap", data: cells }]
    }, true);
  }
  function showStates(rows) {
    var top = rows.slice(0, 27).reverse();
    chart("chart-states").setOption({
      animation: false,
      grid: { left: 60, right: 30, top: 10, bottom: 30 },
      tooltip: { formatter: function (p) {
        var r = top[p.dataIndex];
        var mix = Object.keys(r.segments).sort(function (a, b) { return r.segments[b] - r.segments[a]; }).slice(0, 4)
          .map(function (s) { return s + " " + Math.round(100 * r.segments[s] / r.customers) + "%"; }).join(", ");
        return "<b>" + (r.state || "n/a") + "</b>: revenue " + money(r.revenue) + ", " + fmt.format(r.orders) + " purchases, " +
          fmt.format(r.customers) + " customers<br>" + mix;
      } },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: top.map(function (r) { return r.state || "n/a"; }) },
      series: [{ type: "bar", data: top.map(function (r) { return Math.round(r.revenue); }), itemStyle: { color: "#3182bd" } }]
    }, true);
  }
  function showSegmentRevenue(months) {
    var names = sorted(Object.keys(months.reduce(function (all, m) { Object.assign(all, m.segments); return all; }, {})));
    chart("chart-segment-revenue").setOption({
      animation: false,
      legend: { type: "scroll", top: 0 },
      grid: { left: 70, right: 20, top: 40, bottom: 30 },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", data: months.map(function (m) { return m.month; }) },
      yAxis: { type: "value", name: "revenue" },
      series: names.map(function (s) {
        return { name: s, type: "bar", stack: "revenue", data: months.map(function (m) { return Math.round(m.segments[s] || 0); }) };
      })
    }, true);
  }

  var daily = [], sales = null, modelRuns = "";
  function showDaily() {
    var shown = daily.slice(-120);
    var days = shown.map(function (d) { return d.day; });
    var ahead = sales ? sales.orders : [];  // may overlap the history: a retrain at a past cutoff
    var all = days.concat(ahead.map(function (f) { return f.day; }).filter(function (d) { return days.indexOf(d) < 0; }));
    var at = function (list, key) {
      var by = {}; list.forEach(function (x) { by[x.day] = x[key]; });
      return all.map(function (d) { return by[d] === undefined ? null : by[d]; });
    };
    var series = [{ name: "purchases", type: "bar", data: at(shown, "orders"), itemStyle: { color: "#6baed6" } }];
    if (sales) {
      var level = Math.round(sales.level * 100) + "% interval";
      series.push({ name: "lower", type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 }, data: at(ahead, "lower"), tooltip: { show: false } });
      series.push({ name: level, type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 }, areaStyle: { opacity: 0.25, color: "#fd8d3c" },
        data: at(ahead.map(function (f) { return { day: f.day, width: Math.round((f.upper - f.lower) * 10) / 10 }; }), "width") });
      series.push({ name: "forecast", type: "line", symbol: "none", data: at(ahead, "mean"), itemStyle: { color: "#e6550d" } });
    }
    chart("chart-daily").setOption({
      animation: false,
      legend: { top: 0, data: series.map(function (x) { return x.name; }).filter(function (n) { return n !== "lower"; }) },
      grid: { left: 60, right: 20, top: 40, bottom: 30 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: all },
      yAxis: { type: "value", name: "purchases" },
      series: series
    }, true);
  }
  function showRules(rules) {
    $("rules-empty").hidden = !!rules;
    $("rules").hidden = !rules;
    if (!rules) return;
    $("rules-run").textContent = "retrain run " + rules.run;
    var rows = [];
    [["orders", "one order"], ["months", "one customer-month"]].forEach(function (kind) {
      rules[kind[0]].rules.slice(0, 10).forEach(function (r) {
        var tr = row([kind[1], r.antecedent, r.consequent, fmt.format(r.baskets), r.support.toFixed(4), r.confidence.toFixed(3), r.lift.toFixed(2)], [3, 4, 5, 6]);
        tr.dataset.kind = kind[0];
        rows.push(tr);
      });
    });
    fill($("rules").tBodies[0], rows.length ? rows : [row(["no rule reaches the minimum support and confidence", "", "", "", "", "", ""])]);
  }
  function showTargeting(doc) {
    $("targeting-empty").hidden = !!doc;
    $("targeting").hidden = !doc;
    $("targeting-summary").hidden = !doc;
    if (!doc) return;
    var t = doc.trained_on, v = doc.validation;
    $("targeting-run").textContent = "retrain run " + doc.run;
    $("targeting-summary").textContent = "Trained on " + fmt.format(t.sends) + " sends of " + t.campaigns + " campaigns: " +
      (100 * t.response_treatment).toFixed(1) + "% of the treatment group and " + (100 * t.response_control).toFixed(1) +
      "% of the control group bought within " + doc.window_days + " days." +
      (v.qini_coefficient !== undefined ? " Held-out Qini coefficient " + v.qini_coefficient.toFixed(5) + " (random targeting: 0)." : "") +
      " " + fmt.format(doc.positive_uplift) + " of " + fmt.format(doc.scored_customers) + " customers have a positive uplift.";
    var rows = doc.targets.slice(0, 15).map(function (x, i) {
      var tr = row([i + 1, customerLink(x.customer_unique_id), x.uplift.toFixed(3), x.p_treated.toFixed(3), x.p_control.toFixed(3), x.segment || "–"], [0, 2, 3, 4]);
      tr.dataset.customer = x.customer_unique_id;
      return tr;
    });
    fill($("targeting").tBodies[0], rows.length ? rows : [row(["no customer has a positive uplift", "", "", "", "", ""])]);
  }
  function onModels(models) {
    var runs = models ? [models.rules, models.forecast, models.uplift].join("/") : "";
    if (runs === modelRuns) return;
    modelRuns = runs;
    if (models && models.uplift !== undefined) json("api/targeting").then(function (r) { showTargeting(r.status === 200 ? r.body : null); });
    if (models && models.rules !== undefined) json("api/analytics/rules").then(function (r) { showRules(r.status === 200 ? r.body : null); });
    if (models && models.forecast !== undefined) {
      json("api/analytics/forecast").then(function (r) {
        sales = r.status === 200 ? r.body : null;
        $("forecast-run").textContent = sales ? "forecast of retrain run " + sales.run + " after " + sales.until + " (" + sales.method + ")" : "";
        showDaily();
      });
    }
  }

  // ---- feed, churn ------------------------------------------------------------------------------
  function customerLink(id) {
    var a = el("a", { class: "customer", title: id }, id.slice(0, 12));
    a.addEventListener("click", function () { $("customer").value = id; lookup(id); });
    return a;
  }
  function describe(c) {
    if (c.kind === "segment") return (c.previous_segment || "(new)") + " → " + c.segment;
    var why = c.reasons && c.reasons.length ? " (" + c.reasons.join(", ") + ")" : "";
    return "churn " + (c.previous_status || "(none)") + " → " + c.status + why;
  }
  function showFeed(changes) {
    feed = feed.concat(changes).slice(-200);
    fill($("feed").tBodies[0], feed.slice().reverse().slice(0, 100).map(function (c) {
      return row([when(c.event_time), customerLink(c.customer_unique_id), describe(c), c.cause]);
    }));
    var reasons = {};
    feed.forEach(function (c) { if (c.kind === "churn") (c.reasons || []).forEach(function (r) { reasons[r] = (reasons[r] || 0) + 1; }); });
    var names = Object.keys(reasons).sort(function (a, b) { return reasons[b] - reasons[a]; });
    fill($("reasons").tBodies[0], names.length ? names.map(function (r) { return row([r, fmt.format(reasons[r])], [1]); })
      : [row(["none yet", ""])]);
  }
  function showChurn(churn) {
    chart("chart-churn").setOption({
      animation: false,
      grid: { left: 70, right: 30, top: 10, bottom: 30 },
      tooltip: { trigger: "item" },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: STATUSES.slice().reverse() },
      series: [{ type: "bar", data: STATUSES.slice().reverse().map(function (s) {
        return { value: churn[s] || 0, itemStyle: { color: STATUS_COLORS[s] } };
      }) }]
    });
  }

  // ---- CLV by segment (written by each retrain that fits a CLV model) ----------------------------
  var clvShown = null;
  function showClv(models) {
    var by = models && models.clv_by_segment;
    var key = by ? String(models.clv) : null;
    if (key === clvShown) return;  // the same model: nothing to redraw
    clvShown = key;
    $("clv-empty").hidden = !!by;
    $("chart-clv").hidden = !by;
    $("clv-table").hidden = !by;
    $("clv-run").textContent = by ? "model run " + models.clv + ", horizon " + models.clv_horizon_days + " days" : "";
    if (!by) return;
    var names = sorted(Object.keys(by));
    fill($("clv-table").tBodies[0], names.map(function (s) {
      var d = by[s];
      var tr = row([s, fmt.format(d.customers), money(d.p50), money(d.mean), money(d.p90)], [1, 2, 3, 4]);
      tr.dataset.segment = s;
      return tr;
    }));
    chart("chart-clv").resize();
    chart("chart-clv").setOption({
      animation: false,
      grid: { left: 130, right: 30, top: 10, bottom: 30 },
      tooltip: { trigger: "item", formatter: function (p) {
        var d = by[p.name];
        return "<b>" + p.name + "</b> (" + fmt.format(d.customers) + " customers)<br>CLV 10th / 25th / median / 75th / 90th percentile:<br>" +
          [d.p10, d.p25, d.p50, d.p75, d.p90].map(money).join(" / ") + "<br>mean " + money(d.mean);
      } },
      xAxis: { type: "value", name: "CLV" },
      yAxis: { type: "category", data: names.slice().reverse() },
      series: [{ type: "boxplot", data: names.slice().reverse().map(function (s) {
        var d = by[s];
        return { name: s, value: [d.p10, d.p25, d.p50, d.p75, d.p90], itemStyle: { color: "#fff", borderColor: COLORS[s] || "#4a6fd1" } };
      }) }]
    }, true);
  }

  // ---- health ----------------------------------------------------------------------------------
  function showHealth(s) {
    var c = s.counters || {};
    var models = s.models;
    $("status").innerHTML = "";
    [["event time", when(s.watermark)], ["events/s", s.events_per_second === null ? "–" : fmt.format(s.events_per_second)],
      ["lag", s.lag_total === null ? "unknown" : fmt.format(s.lag_total)], ["dead letters", fmt.format(s.dead_letters)],
      ["models", models ? "run " + models.run : "none"]].forEach(function (pair, i) {
      if (i) $("status").appendChild(document.createTextNode(" · "));
      $("status").appendChild(document.createTextNode(pair[0] + " "));
      $("status").appendChild(el("b", {}, pair[1]));
    });
    fill($("counters").tBodies[0], [
      row(["events consumed", fmt.format(c.consumed || 0)], [1]),
      row(["applied / duplicates / dead-lettered", [c.applied || 0, c.duplicates || 0, c.dead_lettered || 0].map(fmt.format).join(" / ")], [1]),
      row(["clock ticks", fmt.format(c.ticks || 0)], [1]),
      row(["change events waiting for Kafka (outbox)", fmt.format(s.outbox)], [1]),
      row(["RFM thresholds in force", !s.thresholds_version ? "the defaults (the first retrain publishes thresholds of the live population)" :
        "version " + s.thresholds_version + (s.rescore_done ? ", every partition re-scored" : ", re-scoring…")])
    ]);
    fill($("partitions").tBodies[0], s.partitions.map(function (p) {
      return row([p.partition, when(p.watermark), when(p.reviews_watermark), p.lag, p.reviews_lag, p.rescored_version], [3, 4]);
    }));
    $("lag-note").textContent = s.lag_note;
    fill($("dead").tBodies[0], s.last_dead_letters.length ? s.last_dead_letters.map(function (d) {
      return row([when(d.at), d.topic + "[" + d.partition + "]@" + d.offset, d.reason]);
    }) : [row(["none", "", ""])]);
    $("models").textContent = models ? "retrain run " + models.run + " at event time " + when(models.cutoff) +
      "; CLV from run " + (models.clv || "–") + ", recommendations from run " + (models.recommendations || "–") : "none yet: run `segstream retrain --once`";
  }

  function banner(text, isError) {
    var b = $("banner");
    b.hidden = !text;
    b.className = "banner" + (isError ? " error" : "");
    b.innerHTML = text || "";
  }

  function onSnapshot(s) {
    if (s.error) { banner("Cannot read the state: " + s.error.replace(/</g, "&lt;"), true); return; }
    meanings = s.meanings || meanings;
    var total = Object.keys(s.segments).reduce(function (t, k) { return t + s.segments[k]; }, 0);
    banner(total ? "" : "Nothing has been replayed yet. Start a worker (<code>segstream worker</code>) and replay " +
      "history (<code>segstream replay --data DIR</code>), or run <code>segstream demo</code>: this page updates by itself.");
    showSegments(s.segments);
    showChurn(s.churn);
    showFeed(s.changes || []);
    showHealth(s);
    showClv(s.models);
    onModels(s.models);
    onWatermark(s.watermark);
    document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
  }

  // ---- customer lookup -------------------------------------------------------------------------
  function lookup(id) {
    var out = $("customer-out");
    out.textContent = "looking up…";
    json("api/customers/" + encodeURIComponent(id.trim())).then(function (r) {
      out.textContent = "";
      if (r.status !== 200) { out.appendChild(el("p", { class: "empty" }, r.body.error)); return; }
      var c = r.body, p = c.profile;
      var t = el("table", { class: "compact", id: "customer-profile" });
      t.dataset.customer = c.customer_unique_id;
      var body = el("tbody");
      [["customer", c.customer_unique_id], ["segment", (p.segment || "none") + (p.r ? " (R " + p.r + ", F " + p.f + ", M " + p.m + ")" : "")],
        ["meaning", meanings[p.segment] || "–"],
        ["churn status", (p.churn || "–") + (p.churn_reasons && p.churn_reasons.length ? " (" + p.churn_reasons.join(", ") + ")" : "")],
        ["orders", p.orders + " on " + p.purchase_days + " purchase days"], ["monetary", p.monetary],
        ["first / last purchase", when(p.first_purchase) + " / " + when(p.last_purchase)],
        ["evaluated at (event time)", when(p.evaluated_at)],
        ["reviews", p.reviews + (p.review_mean ? ", mean " + p.review_mean.toFixed(2) : "")],
        ["deliveries", p.deliveries + ", " + p.late_deliveries + " late"],
        ["P(alive) now", p.p_alive === null ? "– (the workers evaluate it once a retrain has published a BG/NBD model)" : p.p_alive.toFixed(3)],
        ["P(alive) at the model's cutoff", c.scores ? c.scores.p_alive.toFixed(3) : "–"],
        ["CLV (model run " + (c.models ? c.models.clv : "–") + ")", c.scores ? c.scores.clv.toFixed(2) + ", " +
          c.scores.expected_purchases.toFixed(3) + " expected purchase days" : "– (no CLV model, or no purchase before its cutoff)"],
        ["uplift, next campaign (model run " + (c.models && c.models.uplift !== undefined ? c.models.uplift : "–") + ")",
          c.uplift ? (c.uplift.uplift >= 0 ? "+" : "") + c.uplift.uplift.toFixed(3) + " = P(buy | sent) " + c.uplift.p_treated.toFixed(3) +
          " − P(buy | not sent) " + c.uplift.p_control.toFixed(3) : "– (no uplift model: it needs a campaign log)"],
        ["recommendations", c.recommendations ? c.recommendations.strategy + ": " + c.recommendations.items.join(", ") : "– (no model yet)"],
        ["location", [p.city, p.state].filter(Boolean).join(", ") || "–"]
      ].forEach(function (pair) { body.appendChild(row(pair)); });
      t.appendChild(body);
      out.appendChild(t);
      out.appendChild(el("h3", {}, "Changes"));
      var note = el("p", { class: "hint" }, "reading this customer's changes from the change topics…");
      out.appendChild(note);
      var ch = el("table", { class: "compact", id: "customer-history" });
      var chb = el("tbody");
      ch.appendChild(chb);
      out.appendChild(ch);
      json("api/customers/" + encodeURIComponent(c.customer_unique_id) + "/history").then(function (h) {
        if (h.status !== 200) { note.textContent = h.body.error + "; the latest from the live feed:"; showChanges(chb, c.changes); return; }
        var all = h.body.segment_changes.map(function (x) { return Object.assign({ kind: "segment" }, x); })
          .concat(h.body.churn_changes.map(function (x) { return Object.assign({ kind: "churn" }, x); }))
          .sort(function (a, b) { return a.event_time < b.event_time ? 1 : a.event_time > b.event_time ? -1 : 0; });
        note.textContent = fmt.format(h.body.segment_changes.length) + " segment and " + fmt.format(h.body.churn_changes.length) +
          " churn changes, newest first, from partition " + h.body.partition + " of the change topics (" +
          fmt.format(h.body.scanned) + " records read" + (h.body.complete ? ")" : "; not to the end)");
        showChanges(chb, all);
        ch.dataset.segmentChanges = String(h.body.segment_changes.length);
        ch.dataset.churnChanges = String(h.body.churn_changes.length);
      });
    });
  }
  function showChanges(tbody, changes) {
    fill(tbody, changes.length ? changes.map(function (x) { return row([when(x.event_time), describe(x), x.cause]); })
      : [row(["none", "", ""])]);
  }
  $("lookup").addEventListener("submit", function (e) { e.preventDefault(); lookup($("customer").value); });

  var source = new EventSource("api/stream");
  source.addEventListener("snapshot", function (e) { onSnapshot(JSON.parse(e.data)); });
  source.onerror = function () { $("status").textContent = "reconnecting…"; };
  window.addEventListener("resize", function () { Object.keys(charts).forEach(function (k) { charts[k].resize(); }); });
})();
