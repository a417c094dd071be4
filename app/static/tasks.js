// Keeps the task alerts under the navigation bar live: polls /tasks/<id> until each ends.
// Each alert's data-polling says where it stands: "waiting" for its next poll, or
// "stopped" (the task ended, is gone, or the user is signed out) after its last one.
// Its words come from its data-text-* attributes, in the user's language: whole
// sentences whose {task} and {error} are filled in here.
(function () {
  "use strict";
  function interval(alert) { return parseInt(alert.dataset.pollMs, 10) || 1000; }

  function text(el, value) { el.textContent = value; }

  function sentence(template, values) {
    return template.replace(/\{(task|error)\}/g, function (_, name) { return values[name] || ""; });
  }

  function downloadLink(alert, url) {
    var link = document.createElement("a");
    link.href = url;
    link.className = "download-link";
    text(link, alert.dataset.textDownload);
    return link;
  }

  function finish(alert, task) {
    var succeeded = task.state === "SUCCESS";
    // "Exporting posts..." names the task as "Exporting posts".
    var values = { task: task.description.replace(/(\.\.\.|\u2026)$/, ""), error: task.error };
    var message = alert.querySelector(".task-message");
    alert.classList.remove("alert-info");
    alert.classList.add(succeeded ? "alert-success" : "alert-danger");
    var template = succeeded ? alert.dataset.textDone
      : task.error ? alert.dataset.textFailed : alert.dataset.textFailedUnknown;
    message.textContent = sentence(template, values) + " ";
    // A failed export may still have its file (only the email failed): offer it.
    if (task.download_url) { message.appendChild(downloadLink(alert, task.download_url)); }
    var bar = alert.querySelector(".progress");
    if (bar) { bar.remove(); }
  }

  function stop(alert, message) {
    alert.dataset.polling = "stopped";
    if (message) { alert.querySelector(".task-message").textContent = message; }
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
        if (response.status === 401) { return { signedOut: true }; }
        if (response.status === 404 || response.status === 403) {
          return { gone: true };
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (task) {
        if (task.signedOut) {  // the session ended, here or in another tab: asking again cannot help
          stop(alert, alert.dataset.textSignedOut);
          return;
        }
        if (task.gone) {  // deleted, or not this user's
          stop(alert, alert.dataset.textGone);
          return;
        }
        update(alert, task);
        if (task.state === "SUCCESS" || task.state === "FAILURE") {
          finish(alert, task);
          stop(alert);
        } else {
          alert.dataset.polling = "waiting";
          setTimeout(function () { poll(alert); }, interval(alert));
        }
      })
      .catch(function () {  // the network or the server failed: try again, less often
        alert.dataset.polling = "waiting";
        setTimeout(function () { poll(alert); }, interval(alert) * 3);
      });
  }

  // The page renders each bar's value as aria-valuenow; its width is set here, through
  // the CSSOM, because the Content-Security-Policy refuses style attributes in markup.
  function start(alert) {
    var bar = alert.querySelector(".progress");
    if (bar) { update(alert, { progress: parseInt(bar.getAttribute("aria-valuenow"), 10) }); }
    poll(alert);
  }

  document.querySelectorAll(".task-alert[data-status-url]").forEach(start);
})();
