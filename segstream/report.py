"""The backtest report: one self-contained HTML file (every number of ``figures.json``, plots drawn by
Apache ECharts inlined from ``segstream/static/echarts.min.js``: opened from disk it needs no network).

ECharts, vendored as one file (Apache-2.0, its LICENSE and NOTICE beside it): one library draws
every plot the report and the live view need (lines, stacked areas, bars, heatmaps, Sankey
diagrams), with an SVG renderer whose output a headless browser test can count. Each plot is a
``<div class="chart">`` whose ECharts option is built here in Python; the page marks a plot
``data-rendered="1"`` when ECharts reports it finished, and records script errors in
``<body data-errors>``, so a test can check both.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

SEGMENT_ORDER = [
    "Champions",
    "Loyal",
    "Potential Loyalists",
    "New Customers",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.chart { width: 100%; margin: 1rem 0; }
pre { font-size: 11px; max-height: 30rem; overflow: auto; }
"""


def _static(name: str) -> str:
    """A file of segstream/static, inlined: the report opens from disk with no network."""
    return (resources.files("segstream") / "static" / name).read_text(encoding="utf-8")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.charts: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def chart(self, title: str, option: dict[str, Any], height: int = 320) -> None:
        chart_id = f"chart-{len(self.charts)}"
        option = {"title": {"text": title, "textStyle": {"fontSize": 13}}, "animation": False, **option}
        option.setdefault("tooltip", {"trigger": "axis"})
        self.charts.append({"id": chart_id, "option": option})
        self.add(f'<div class="chart" id="{chart_id}" style="height:{height}px"></div>')


def _line(x: list[Any], series: dict[str, list[Any]], x_name: str, y_name: str, area: bool = False) -> dict[str, Any]:
    return {
        "legend": {"top": 22},
        "grid": {"top": 60, "left": 60, "right": 20, "bottom": 40},
        "xAxis": {"type": "category", "data": x, "name": x_name, "nameLocation": "middle", "nameGap": 26},
        "yAxis": {"type": "value", "name": y_name},
        "series": [
            {"name": name, "type": "line", "data": values, "showSymbol": False}
            | ({"stack": "all", "areaStyle": {}} if area else {})
            for name, values in series.items()
        ],
    }


def _bars(x: list[Any], series: dict[str, list[Any]], y_name: str) -> dict[str, Any]:
    return {
        "legend": {"top": 22},
        "grid": {"top": 60, "left": 60, "right": 20, "bottom": 70},
        "xAxis": {"type": "category", "data": x, "axisLabel": {"rotate": 30, "interval": 0}},
        "yAxis": {"type": "value", "name": y_name},
        "series": [{"name": name, "type": "bar", "data": values} for name, values in series.items()],
    }


def _band(series: list[dict[str, Any]], y_name: str, level: float) -> dict[str, Any]:
    """Actual against forecast, the prediction interval as a band (a stacked area on the lower bound)."""
    days = [r["day"] for r in series]
    return {
        "legend": {"top": 22, "data": ["actual", "forecast", f"{level:.0%} interval"]},
        "tooltip": {"trigger": "axis"},
        "grid": {"top": 60, "left": 70, "right": 20, "bottom": 60},
        "xAxis": {"type": "category", "data": days, "axisLabel": {"rotate": 30}},
        "yAxis": {"type": "value", "name": y_name},
        "series": [
            {"name": "lower", "type": "line", "data": [r["lower"] for r in series], "stack": "band",
             "lineStyle": {"opacity": 0}, "symbol": "none", "tooltip": {"show": False}},
            {"name": f"{level:.0%} interval", "type": "line", "stack": "band", "symbol": "none",
             "data": [round(r["upper"] - r["lower"], 2) for r in series], "lineStyle": {"opacity": 0},
             "areaStyle": {"opacity": 0.25}},
            {"name": "forecast", "type": "line", "data": [r["mean"] for r in series]},
            {"name": "actual", "type": "line", "data": [r["actual"] for r in series]},
        ],
    }  # fmt: skip


def _heatmap(x: list[Any], y: list[Any], cells: list[list[Any]], label: str) -> dict[str, Any]:
    data = [[i, j, v] for j, row in enumerate(cells) for i, v in enumerate(row)]
    values = [v for row in cells for v in row] or [0]
    return {
        "tooltip": {"position": "top"},
        "grid": {"top": 40, "left": 110, "right": 20, "bottom": 80},
        "xAxis": {"type": "category", "data": x, "axisLabel": {"rotate": 30}},
        "yAxis": {"type": "category", "data": y},
        "visualMap": {
            "min": min(values),
            "max": max(values) or 1,
            "calculable": True,
            "orient": "horizontal",
            "left": "center",
            "bottom": 0,
            "text": [label, ""],
        },
        "series": [{"type": "heatmap", "data": data, "label": {"show": len(data) <= 150}}],
    }


def _cutoff_section(page: _Page, c: dict[str, Any]) -> None:
    n = c["customers"]
    page.add(f"<h2>Cutoff {c['cutoff']} (horizon to {c['horizon_end']})</h2>")
    page.add(
        f"<p>{n['scored']:,} calibration customers scored ({n['calibration_source']:,} in the source data, "
        f"{n['calibration_stream']:,} in the stream's state); <b>{n['bought_again']:,} "
        f"({_fmt((n['bought_again_share'] or 0) * 100, 2)}%) bought again</b> in the horizon; "
        f"{n['new_in_horizon']:,} new customers bought in it. Retrain run {c['retrain'].get('run')}: "
        f"CLV {_fmt(c['retrain'].get('clv'))}; recommendations {_fmt(c['retrain'].get('recommendations'))}; "
        f"thresholds {_fmt(c['retrain'].get('thresholds'))}.</p>"
    )
    p = c["purchases"]
    if "served" in p:
        rows = [
            [
                "served: " + p["served"]["model"],
                *(p["served"][k] for k in ("mae", "rmse", "spearman", "predicted_total", "actual_total")),
            ]
        ]
        for name, b in p["baselines"].items():
            if "error" in b:
                rows.append([name, b["error"], None, None, None, None])
            else:
                rows.append([name, *(b[k] for k in ("mae", "rmse", "spearman", "predicted_total", "actual_total"))])
        page.add("<h3>Purchases in the horizon (distinct purchase days), per customer</h3>")
        page.add(_table(["model", "MAE", "RMSE", "Spearman", "predicted total", "actual total"], rows))
        weekly = p["weekly"]
        page.chart(
            "Cumulative repeat purchase days in the horizon: predicted vs actual",
            _line(
                [w["day"] for w in weekly],
                {"predicted": [w["predicted"] for w in weekly], "actual": [w["actual"] for w in weekly]},
                "days after the cutoff",
                "purchase days",
            ),
        )
        deciles = p["deciles"]
        page.chart(
            "Calibration by decile of predicted purchases",
            _bars(
                [str(d["decile"]) for d in deciles],
                {"predicted mean": [d["predicted"] for d in deciles], "actual mean": [d["actual"] for d in deciles]},
                "purchase days",
            ),
        )
        spend = p["spend"]
        page.add("<h3>Spend in the horizon, per customer</h3>")
        page.add(
            _table(
                ["prediction", "MAE", "RMSE", "Spearman", "predicted total", "actual total"],
                [
                    [name, *(spend[key][k] for k in ("mae", "rmse", "spearman", "predicted_total", "actual_total"))]
                    for name, key in (
                        ("served CLV", "served_clv"),
                        ("historical spend rate", "baseline_historical_spend_rate"),
                    )
                ],
            )
        )
    else:
        page.add(f"<p>{_fmt(p.get('error'))}</p>")
    churn = c["churn"]
    page.add("<h3>Buys again within the horizon: churn signals</h3>")
    signals = (
        ("P(alive)", "p_alive"),
        ("expected purchases", "expected_purchases"),
        ("churn status", "status"),
        ("recency alone (baseline)", "baseline_recency"),
    )
    rows = []
    for group, scored in (("all", churn), ("repeat buyers", churn["repeat_buyers"])):
        for name, key in signals:
            if key in scored:
                m = scored[key]
                rows.append([name, group, m["customers"], m["positives"], m["auc"], m["brier"]])
    page.add(_table(["signal", "among", "customers", "bought again", "AUC", "Brier"], rows))
    page.add(
        "<p>BG/NBD gives every one-time buyer P(alive) = 1 (no silence to learn from), so P(alive) ranks "
        "best among repeat buyers; Brier is for probabilities only (churn status as 1, 0.5, 0).</p>"
    )
    page.chart(
        "AUC of buying again within the horizon (0.5: no better than chance)",
        _bars(
            [name for name, _ in signals],
            {
                group: [scored.get(key, {}).get("auc") for _, key in signals]
                for group, scored in (("all customers", churn), ("repeat buyers", churn["repeat_buyers"]))
            },
            "AUC",
        ),
    )
    by_status = churn["status"]["by_status"]
    page.add(
        _table(
            ["status at the cutoff", "customers", "bought again"],
            [[s, v["customers"], v["bought_again"]] for s, v in by_status.items()],
        )
    )
    seg = c["segments"]
    names = [s for s in SEGMENT_ORDER if s in seg["at_cutoff"]] + sorted(set(seg["at_cutoff"]) - set(SEGMENT_ORDER))
    page.add("<h3>Segments at the cutoff</h3>")
    page.add(
        _table(
            ["segment", "customers", "repeat rate", "revenue in horizon", "revenue share"],
            [
                [
                    s or "(none)",
                    *(seg["at_cutoff"][s][k] for k in ("customers", "repeat_rate", "revenue", "revenue_share")),
                ]
                for s in names
            ],
        )
    )
    page.chart(
        "Revenue share and repeat rate in the horizon, by segment at the cutoff",
        _bars(
            [s or "(none)" for s in names],
            {
                "revenue share": [seg["at_cutoff"][s]["revenue_share"] for s in names],
                "repeat rate": [seg["at_cutoff"][s]["repeat_rate"] for s in names],
            },
            "share",
        ),
    )
    if "transitions" in seg:
        labels = [s for s in SEGMENT_ORDER if any(t["from"] == s or t["to"] == s for t in seg["transitions"])]
        labels += [*sorted({t["to"] for t in seg["transitions"]} - set(labels) - {""}), ""]
        index = {s: i for i, s in enumerate(labels)}
        cells = [[0] * len(labels) for _ in labels]
        for t in seg["transitions"]:
            cells[index[t["from"]]][index[t["to"]]] += t["customers"]
        shown = [s or "(none)" for s in labels]
        page.chart(
            f"Segment transitions, cutoff (rows) to {c['horizon_end']} (columns), customers",
            _heatmap(shown, shown, cells, "customers"),
            height=420,
        )
    recs = c["recommendations"]
    page.add(f"<h3>Recommendations at k = {recs.get('k', '')} against the horizon's purchases</h3>")
    if "overall" in recs:
        rows = []
        paired = {**recs["by_strategy"], **{f"{n} (rival, not served)": r for n, r in recs.get("rivals", {}).items()}}
        groups = [
            ("overall", recs["overall"]),
            *paired.items(),
            ("default list for every buyer", recs["baseline_default_list"]),
        ]
        for name, r in groups:
            for level in ("product", "category"):
                m = r[level]
                rows.append([name, level, m["customers"], m["precision"], m["recall"], m["hit_rate"], m["ndcg"]])
                if name in paired:
                    b = r["baseline_default_list"][level]
                    rows.append(
                        [
                            f"{name}: default list instead",
                            level,
                            b["customers"],
                            b["precision"],
                            b["recall"],
                            b["hit_rate"],
                            b["ndcg"],
                        ]
                    )
        page.add(_table(["strategy", "level", "customers", "precision", "recall", "hit rate", "NDCG"], rows))
        strategies = list(paired)
        page.chart(
            "Product hit rate by strategy, against the default list dealt to the same customers",
            _bars(
                strategies,
                {
                    "strategy's lists": [paired[s]["product"]["hit_rate"] for s in strategies],
                    "default list": [paired[s]["baseline_default_list"]["product"]["hit_rate"] for s in strategies],
                },
                "hit rate",
            ),
        )
        _segments_section(page, recs)
    else:
        page.add(f"<p>{_fmt(recs.get('error'))}</p>")
    _forecast_section(page, c)
    _uplift_section(page, c)
    rules = c.get("basket_rules") or {}
    for kind, title in (("orders", "bought in one order"), ("months", "bought by one customer in one month")):
        found = rules.get(kind)
        if not found:
            continue
        page.add(
            f"<h3>Market basket rules: categories {title}</h3><p>{found['rules_found']:,} rules from "
            f"{found['baskets']:,} baskets ({found['categories']:,} categories, {found['pairs']:,} pairs), minimum "
            f"support {_fmt(rules.get('min_support'))} and confidence {_fmt(rules.get('min_confidence'))}; the "
            "strongest by lift:</p>"
        )
        page.add(
            _table(
                ["if", "then", "baskets", "support", "confidence", "lift", "leverage"],
                [[r[c] for c in RULE_COLUMNS] for r in found["rules"][:15]],
            )
        )


def _segments_section(page: _Page, recs: dict[str, Any]) -> None:
    by_segment = recs.get("by_segment") or {}
    if not by_segment:
        return
    strategies = sorted({s for row in by_segment.values() for s in row["strategies"]})
    page.add(
        "<h4>Product hit rate of every strategy per segment (the same customers each), and the strategy "
        "proposed for it (written to strategy-map.json)</h4>"
    )
    rows = [
        [segment, row["customers"], *(row["strategies"][s]["hit_rate"] for s in strategies), row["best"], row["note"]]
        for segment, row in by_segment.items()
    ]
    page.add(_table(["segment", "customers", *strategies, "proposed", "note"], rows))


def _forecast_section(page: _Page, c: dict[str, Any]) -> None:
    sales = c.get("forecast") or {}
    page.add("<h3>Sales forecast against the horizon's daily purchases and revenue</h3>")
    if "error" in sales or not sales:
        page.add(f"<p>{_fmt(sales.get('error', 'no forecast'))}</p>")
        return
    rows = []
    for column in ("orders", "revenue"):
        f = sales[column]
        for name, e in (("forecast", f["forecast"]), ("seasonal naive", f["baseline_seasonal_naive"])):
            coverage = f["interval_coverage"] if name == "forecast" else ""
            rows.append([column, name, e["mape"], e["mase"], coverage])
    page.add(
        f"<p>{_fmt(sales['method'])}, {sales['days']} days; seasonal naive = the same weekday of the last week "
        "before the cutoff. MASE below 1 beats the in-sample seasonal naive error.</p>"
    )
    page.add(_table(["series", "model", "MAPE", "MASE", "interval coverage"], rows))
    for column in ("orders", "revenue"):
        page.chart(f"Daily {column}: forecast and actual", _band(sales[column]["series"], column, sales["level"]))


def _uplift_section(page: _Page, c: dict[str, Any]) -> None:
    found = c.get("uplift")
    if found is None:  # a history without a campaign log
        return
    page.add("<h3>Campaign targeting: the uplift served at the cutoff against the campaigns that followed</h3>")
    if "error" in found:
        page.add(f"<p>{_fmt(found['error'])}</p>")
        return
    page.add(
        f"<p>{found['sends']:,} sends of campaigns {', '.join(found['campaigns'])}, each with its "
        f"{found['window_days']}-day response window inside the horizon: "
        f"{_fmt(found['response_treatment'])} of the treatment group and {_fmt(found['response_control'])} of the "
        "control group bought. Each score ranks the sends as of the cutoff; the Qini coefficient is the area "
        "between its Qini curve and random targeting's (0 for a score that knows nothing; docs/definitions.md)."
        + (f" {found['persuadable']:,} sends went to planted persuadables." if found.get("persuadable") else "")
        + "</p>"
    )
    names = list(found["by_score"])
    precision = any("precision_at_persuadable" in v for v in found["by_score"].values())
    header = ["targeting by", "Qini coefficient", "AUUC"] + (
        ["precision at the persuadables' number"] if precision else []
    )
    rows = [
        [name, v["qini_coefficient"], v["auuc"]] + ([v.get("precision_at_persuadable")] if precision else [])
        for name, v in found["by_score"].items()
    ]
    page.add(_table(header, rows))
    page.chart(
        "Qini curves: incremental purchases per send, by the share of sends targeted",
        {
            "legend": {"top": 22},
            "grid": {"top": 60, "left": 70, "right": 20, "bottom": 40},
            "xAxis": {"type": "category", "data": found["curve_share_targeted"], "name": "share targeted"},
            "yAxis": {"type": "value", "name": "incremental purchases per send"},
            "series": [
                {"name": name, "type": "line", "symbol": "none", "data": found["curves"][name]} for name in names
            ],
        },
    )


RULE_COLUMNS = ("antecedent", "consequent", "baskets", "support", "confidence", "lift", "leverage")


def write_report(path: Path, figures: dict[str, Any], run: dict[str, Any]) -> None:
    page = _Page()
    params, data = figures["parameters"], figures["data"]
    page.add("<h1>segstream backtest</h1>")
    page.add(
        f"<p>{_fmt(params['data'])} ({_fmt(params['source'])}, fingerprint {data['fingerprint']}), purchases "
        f"{data['first_purchase_day']} to {data['last_purchase_day']}; cutoffs {', '.join(params['cutoffs'])}, "
        f"horizon {params['horizon_days']} days; CLV model {params['clv_model']}; segstream "
        f"{figures['segstream_version']}. Ran in {run['seconds'].get('total', 0):,.1f} s "
        f"({run['events_replayed']:,} events through the pipeline, {run['events_per_second']:,} events/s replay and "
        f'catch-up). Definitions: docs/definitions.md, "Backtests".</p>'
    )
    page.add(_table(["phase", "seconds"], [[k, v] for k, v in run["seconds"].items()]))
    for cutoff in figures["cutoffs"]:
        _cutoff_section(page, cutoff)
    page.add("<h2>Over event time and across the history</h2>")
    mix = figures["segment_mix"]
    names = [s for s in SEGMENT_ORDER if any(s in m["segments"] for m in mix)]
    page.chart(
        "Segment mix at the end of each event-month (customers)",
        _line(
            [m["month"] for m in mix],
            {s: [m["segments"].get(s, 0) for m in mix] for s in names},
            "month",
            "customers",
            area=True,
        ),
        height=380,
    )
    a = figures["analyses"]
    cohorts = a["cohorts"]
    page.chart(
        "Acquisition cohorts: share of each month's new customers buying k months later",
        _heatmap(
            [str(k) for k in range(len(cohorts[0]["retention"]) if cohorts else 0)],
            [f"{c['cohort']} ({c['customers']:,})" for c in cohorts],
            [[round(v, 4) for v in c["retention"]] for c in cohorts],
            "share",
        ),
        height=max(320, 22 * len(cohorts) + 120),
    )
    page.chart(
        "Orders by weekday and hour (event time, the data's own clock)",
        _heatmap([str(h) for h in range(24)], WEEKDAYS, a["weekday_hour"]["orders"], "orders"),
        height=340,
    )
    states = [s for s in a["states"] if s["state"]][:27]
    if states:
        page.chart(
            "Revenue and customers by state (or country)",
            _bars(
                [s["state"] for s in states],
                {"revenue": [s["revenue"] for s in states], "customers": [s["customers"] for s in states]},
                "",
            ),
        )
    else:
        page.add("<p>No state or country in this source: no geography.</p>")
    reviews = a["review_vs_repeat"]
    if reviews:
        page.chart(
            "Share of customers with more than one purchase day, by the score of their first review",
            _bars([str(r["score"]) for r in reviews], {"repeat share": [r["repeat_share"] for r in reviews]}, "share"),
        )
    else:
        page.add("<p>No reviews in this source: no review score against repeat purchase.</p>")
    page.add("<h2>figures.json</h2><details><summary>every number of this report</summary><pre>")
    page.add(html.escape(json.dumps(figures, indent=1, sort_keys=True)))
    page.add("</pre></details>")
    charts = json.dumps(page.charts).replace("</", "<\\/")  # no "</script>" inside the script
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>segstream backtest</title>\n'
        f"<script>{_static('report-errors.js')}</script>\n<style>{_STYLE}</style>\n"
        f'<script>{_static("echarts.min.js")}</script>\n</head><body data-errors="">\n'
        + "".join(page.parts)
        + f"\n<script>window.segstreamCharts = {charts};</script>\n<script>{_static('report.js')}</script>\n"
        "</body></html>\n"
    )
    path.write_text(document, encoding="utf-8")
