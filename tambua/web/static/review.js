// Adjudication pages: view switching, contrast/brightness/zoom, keyboard shortcuts.
// No inline script (the pages' Content-Security-Policy allows only this file).
(function () {
  "use strict";
  function each(sel, fn) { document.querySelectorAll(sel).forEach(fn); }

  each(".panel", function (panel) {
    panel.querySelectorAll("button.view").forEach(function (b) {
      b.addEventListener("click", function () {
        panel.querySelectorAll("button.view").forEach(function (x) { x.classList.remove("on"); });
        b.classList.add("on");
        panel.querySelectorAll("img.sample").forEach(function (img) {
          img.src = img.dataset.base + "&view=" + b.dataset.view;
        });
      });
    });
  });

  function applyLook() {
    var c = document.getElementById("contrast"), br = document.getElementById("brightness"),
        z = document.getElementById("zoom");
    if (!c) return;
    each("img.sample", function (img) {
      img.style.filter = "contrast(" + c.value + "%) brightness(" + br.value + "%)";
      img.style.transform = "scale(" + (z.value / 100) + ")";
    });
  }
  ["contrast", "brightness", "zoom"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) el.addEventListener("input", applyLook);
  });
  var reset = document.getElementById("reset-view");
  if (reset) reset.addEventListener("click", function () {
    document.getElementById("contrast").value = 100;
    document.getElementById("brightness").value = 100;
    document.getElementById("zoom").value = 100;
    applyLook();
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target || {};
    // Letters typed into the reason (or a text box) are text; on sliders and buttons they are shortcuts.
    var typing = t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && /^(text|password|search|email|number)$/.test(t.type));
    var form = document.getElementById("decision");
    if (form && e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (form.reportValidity()) form.requestSubmit();
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    var pick = { s: "verdict-same", d: "verdict-different", r: "verdict-recapture" }[e.key.toLowerCase()];
    if (pick && document.getElementById(pick)) {
      e.preventDefault();
      document.getElementById(pick).checked = true;
      if (e.key === "S" && document.getElementById("discard")) document.getElementById("discard").checked = true;
      document.getElementById("reason").focus();
      return;
    }
    var nav = { n: "next-hit", ArrowRight: "next-hit", p: "prev-hit", ArrowLeft: "prev-hit" }[e.key];
    if (nav && document.getElementById(nav)) { e.preventDefault(); document.getElementById(nav).click(); }
  });
})();
