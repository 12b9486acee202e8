/* The book's own script (added to every page, deferred, by tools/site_fixes.py).

   Navigation buttons that work at every width. pydata-sphinx-theme 0.17 and sphinx-book-theme 1.3
   bind their sidebar handlers to the *first* .primary-toggle and .secondary-toggle on the page:
   pydata's own header buttons, which sphinx-book-theme hides. The buttons a reader sees (in
   sphinx-book-theme's article header, later on the page) got no handler, so a tap showed a
   tooltip and opened nothing. This script runs before the themes bind theirs (it comes before
   pydata-sphinx-theme.js among the deferred scripts, and sphinx-book-theme waits for
   DOMContentLoaded) and removes every toggle but the last of each kind, so the themes bind the
   buttons a reader sees: the sidebar opens as a dialog on a narrow screen and folds away on a
   wide one. Where a theme has one button of a kind, nothing changes. */
(function () {
  "use strict";
  ["primary-toggle", "secondary-toggle"].forEach(function (kind) {
    var toggles = document.querySelectorAll("button." + kind);
    for (var i = 0; i < toggles.length - 1; i++) {
      toggles[i].remove();
    }
  });
})();
