// Lets the reader dismiss a message: a click on an alert's close button (a "×") removes
// the alert. Flash messages have the button in the page; task alerts get it from tasks.js
// once they have ended.
//
// The focus is not left on a button that no longer exists (a keyboard user would be sent
// back to the top of the page): it goes to the next message's close button, else the
// previous one's, else to the page's content, from where Tab goes on.
(function () {
  "use strict";
  // The close buttons the reader can still reach once this alert is gone, in page order.
  function remainingButtons(alert) {
    return Array.prototype.filter.call(document.querySelectorAll(".alert > button.close"), function (b) {
      return b.parentElement === alert || (!alert.contains(b) && b.offsetParent !== null);
    });
  }

  function focusAfter(button) {
    var alert = button.parentElement;
    var buttons = remainingButtons(alert);
    var index = buttons.indexOf(button);
    var next = buttons[index + 1] || buttons[index - 1];
    if (next) { return next; }
    var main = document.querySelector("main");
    if (main && !main.hasAttribute("tabindex")) {
      // Focusable for this once: a later click on its text must not focus it.
      main.setAttribute("tabindex", "-1");
      main.addEventListener("blur", function () { main.removeAttribute("tabindex"); }, { once: true });
    }
    return main;
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".alert > button.close");
    if (!button) { return; }
    var target = focusAfter(button);
    button.parentElement.remove();
    if (target) { target.focus(); }
  });
})();
