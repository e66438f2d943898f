// Loaded first in the report's <head>: records every script error and console.error in
// <body data-errors>, so a headless browser test can see them in the DOM it dumps.
window.__errors = [];
function __showErrors() {
  if (document.body) document.body.dataset.errors = window.__errors.join(" | ");
}
window.addEventListener("error", function (event) {
  window.__errors.push(String(event.message));
  __showErrors();
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, " "));
    __showErrors();
    return original.apply(console, arguments);
  };
})();
