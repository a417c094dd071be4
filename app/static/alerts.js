// Lets the reader dismiss a message: a click on an alert's close button (a "×") removes
// the alert. Flash messages have the button in the page; task alerts get it from tasks.js
// once they have ended.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest(".alert > button.close");
    if (button) { button.parentElement.remove(); }
  });
})();
