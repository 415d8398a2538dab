// Adds a "Copy" button after every read-only link field (.copy-field). Without JavaScript the
// fields still work: select the text and copy it by hand.
(function () {
  "use strict";
  if (!navigator.clipboard) { return; }
  document.querySelectorAll("input.copy-field").forEach(function (input) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "secondary copy-button";
    button.textContent = "Copy";
    var label = input.labels && input.labels[0] ? input.labels[0].textContent.trim() : "link";
    button.setAttribute("aria-label", "Copy " + label);
    var status = document.createElement("span");
    status.className = "copy-status";
    status.setAttribute("role", "status");
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(input.value).then(function () {
        status.textContent = "Copied";
      }, function () {
        input.select();
        status.textContent = "Press Ctrl+C (or Cmd+C) to copy";
      });
    });
    input.addEventListener("focus", function () { input.select(); });
    input.insertAdjacentElement("afterend", status);
    input.insertAdjacentElement("afterend", button);
  });
})();
