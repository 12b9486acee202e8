// Makes the ipywidgets manager (html-manager/embed-amd.js) work offline with MathJax 3.
// Loaded only on pages with widgets, after require.js and before embed-amd.js
// (see `nb_ipywidgets_js` in _config.yml).
(function () {
  "use strict";

  // 1. The manager's icon fonts sit next to embed-amd.js, but its CSS looks for them next to
  //    the AMD modules it defines ("@jupyter-widgets/base", ...), which require.js places in
  //    the page's own folder: a 404 for every font on every widget page. Map each module to
  //    the folder the fonts are in (the modules are defined by embed-amd.js, never fetched);
  //    the global covers assets the manager loads later.
  var here = document.currentScript ? document.currentScript.src : window.location.href;
  var assets = new URL("html-manager/", here).href;
  window.__jupyter_widgets_assets_path__ = assets;
  var modules = ["base", "base7", "controls", "controls7", "html-manager", "html-manager/dist/libembed-amd"];
  var paths = {};
  modules.forEach(function (name) {
    paths["@jupyter-widgets/" + name] = assets + name.split("/").pop();
  });
  if (typeof window.requirejs === "function") {
    window.requirejs.config({paths: paths});
  } else {
    console.warn("widgets-offline.js: load require.js first (nb_ipywidgets_js in _config.yml)");
  }

  // 2. ipywidgets 8 typesets widget labels with the MathJax 2 API,
  //        MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])
  //    The book loads MathJax 3, which has no `Hub`: without this, a label with maths stays
  //    raw and the page logs "Cannot read properties of undefined (reading 'Queue')".
  //    (Description "$T$" works in Jupyter; here it becomes "\(T\)" first.)
  //    MathJax 3 replaces `window.MathJax` when it starts, so install once the document is
  //    parsed and again once the page has loaded (the widgets are rendered after "load").
  function installHub() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || typeof mj.typesetPromise !== "function") {
      return;
    }
    mj.Hub = {
      Queue: function (job) {
        var element = Array.isArray(job) ? job[2] : undefined;
        if (!element) {
          return;
        }
        // Jupyter's MathJax reads $...$ too; the book's reads only \( \) (so a "$5" in prose
        // stays text). Convert the label's dollars, in plain-text labels only.
        if (element.childElementCount === 0 && element.textContent.indexOf("$") >= 0) {
          element.textContent = element.textContent.replace(/\$([^$]+)\$/g, "\\($1\\)");
        }
        mj.typesetPromise([element]).catch(function (err) {
          console.warn("MathJax could not typeset a widget label:", err);
        });
      }
    };
  }
  document.addEventListener("DOMContentLoaded", installHub);
  window.addEventListener("load", installHub);
})();
