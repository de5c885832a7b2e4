// MathJax 3 settings for the pages built by pymdownx.arithmatex (generic mode):
// arithmatex wraps every $...$ in \( \) and every $$...$$ in \[ \], inside an
// element of class "arithmatex"; only those elements are typeset, so dollar
// signs in code blocks and prose stay as they are.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    // Equation numbers come from the explicit \tag{n} in the text.
    tags: "none",
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  svg: {
    // Glyphs are drawn as SVG paths: no web fonts to fetch, which also works
    // for a site opened straight from the disk (file://).
    fontCache: "global",
  },
};

// Material's instant navigation swaps the page without reloading scripts:
// typeset again after every page change.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
