MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null},
  showMathMenu: false
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/induction_nb.js");
