// Draws the report's plots: `window.segstreamCharts` holds one {id, option} per <div class="chart">
// (ECharts options built in segstream/report.py). SVG renderer: the drawn shapes are in the DOM.
// A plot is marked data-rendered="1" when ECharts says it finished drawing every series it was
// given. The production build drops a series it cannot draw (an unknown type, say) without a
// word, so the series ECharts kept are counted against the option's and a shortfall is an error.
(function () {
  var charts = window.segstreamCharts || [];
  charts.forEach(function (spec) {
    var node = document.getElementById(spec.id);
    var chart = echarts.init(node, null, { renderer: "svg" });
    chart.on("finished", function () {
      var drawn = chart.getModel().getSeriesCount();
      var given = (spec.option.series || []).length;
      if (drawn === given) {
        node.dataset.rendered = "1";
      } else if (!node.dataset.failed) {
        node.dataset.failed = "1";
        window.__errors.push(spec.id + ": " + drawn + " of " + given + " series drawn");
        __showErrors();
      }
    });
    chart.setOption(spec.option);
  });
  document.body.dataset.charts = String(charts.length);
  __showErrors();
})();
