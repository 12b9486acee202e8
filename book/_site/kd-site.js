/* The book's own script (linked by html_js_files in _config.yml, deferred).

   Navigation buttons that work at every width. pydata-sphinx-theme 0.17 and sphinx-book-theme 1.3
   bind their sidebar handlers to the *first* .primary-toggle and .secondary-toggle on the page:
   pydata's own header buttons, which sphinx-book-theme hides. The buttons a reader sees (in
   sphinx-book-theme's article header) get no handler, so a tap shows a tooltip and opens nothing.
   Here every other toggle passes its click on to the first one, whose handlers then do what the
   theme meant: open the sidebar as a dialog on a narrow screen, fold it away on a wide one. */
(function () {
  "use strict";

  function forwardClicks(selector) {
    var toggles = document.querySelectorAll(selector);
    var bound = toggles[0];
    for (var i = 1; i < toggles.length; i++) {
      toggles[i].addEventListener("click", function (event) {
        event.preventDefault();
        event.stopPropagation();
        bound.click();
      });
    }
  }

  function start() {
    forwardClicks(".primary-toggle");
    forwardClicks(".secondary-toggle");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
