// Keeps the task alerts under the navigation bar live: polls /tasks/<id> until each ends.
(function () {
  "use strict";
  function interval(alert) { return parseInt(alert.dataset.pollMs, 10) || 1000; }

  function text(el, value) { el.textContent = value; }

  function downloadLink(url) {
    var link = document.createElement("a");
    link.href = url;
    link.className = "download-link";
    text(link, "Download your export");
    return link;
  }

  function finish(alert, task) {
    var succeeded = task.state === "SUCCESS";
    var name = task.description.replace(/\.\.\.$/, "");
    var message = alert.querySelector(".task-message");
    alert.classList.remove("alert-info");
    alert.classList.add(succeeded ? "alert-success" : "alert-danger");
    message.textContent = succeeded
      ? name + ": done. "
      : name + " failed: " + (task.error || "something went wrong.") + " ";
    // A failed export may still have its file (only the email failed): offer it.
    if (task.download_url) { message.appendChild(downloadLink(task.download_url)); }
    var bar = alert.querySelector(".progress");
    if (bar) { bar.remove(); }
  }

  function update(alert, task) {
    var percent = Math.max(0, Math.min(100, task.progress || 0));
    var bar = alert.querySelector(".progress-bar");
    if (bar) {
      bar.style.width = percent + "%";
      bar.parentElement.setAttribute("aria-valuenow", percent);
    }
    var label = alert.querySelector(".task-percent");
    if (label) { text(label, percent + "%"); }
  }

  function poll(alert) {
    fetch(alert.dataset.statusUrl, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 404 || response.status === 403) {
          return { gone: true };
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (task) {
        if (task.gone) {  // deleted, or the session ended: stop asking
          alert.querySelector(".task-message").textContent = "This task is no longer available.";
          return;
        }
        update(alert, task);
        if (task.state === "SUCCESS" || task.state === "FAILURE") {
          finish(alert, task);
        } else {
          setTimeout(function () { poll(alert); }, interval(alert));
        }
      })
      .catch(function () { setTimeout(function () { poll(alert); }, interval(alert) * 3); });
  }

  document.querySelectorAll(".task-alert[data-status-url]").forEach(poll);
})();
