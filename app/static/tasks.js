// Keeps the task alerts under the navigation bar live: polls /tasks/<id> until each ends.
(function () {
  "use strict";
  function interval(alert) { return parseInt(alert.dataset.pollMs, 10) || 1000; }

  function text(el, value) { el.textContent = value; }

  function finish(alert, task) {
    alert.classList.remove("alert-info");
    var message = alert.querySelector(".task-message");
    var bar = alert.querySelector(".progress");
    if (task.state === "SUCCESS") {
      alert.classList.add("alert-success");
      message.textContent = task.description.replace(/\.\.\.$/, "") + ": done. ";
      if (task.download_url) {
        var link = document.createElement("a");
        link.href = task.download_url;
        link.className = "download-link";
        text(link, "Download your export");
        message.appendChild(link);
      }
      if (bar) { bar.remove(); }
    } else {
      alert.classList.add("alert-danger");
      message.textContent = task.description.replace(/\.\.\.$/, "") + " failed: " +
        (task.error || "something went wrong.") + " ";
      if (task.download_url) {
        var fallback = document.createElement("a");
        fallback.href = task.download_url;
        fallback.className = "download-link";
        text(fallback, "Download your export");
        message.appendChild(fallback);
      }
      if (bar) { bar.remove(); }
    }
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
