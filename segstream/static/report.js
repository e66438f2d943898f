// Draws the report's plots: `window.segstreamCharts` holds one {id, option} per <div class="chart">
// (ECharts options built in segstream/report.py). SVG renderer: the drawn shapes are in the DOM.
// A plot is marked data-rendered="1" when ECharts says it finished drawing.
(function () {
  var charts = window.segstreamCharts || [];
  charts.forEach(function (spec) {
    var node = document.getElementById(spec.id);
    var chart = echarts.init(node, null, { renderer: "svg" });
    chart.on("finished", function () {
      node.dataset.rendered = "1";
    });
    chart.setOption(spec.option);
  });
  document.body.dataset.charts = String(charts.length);
  __showErrors();
})();
