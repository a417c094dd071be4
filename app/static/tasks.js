// Keeps the task alerts under the navigation bar live: polls /tasks/<id> until each ends.
// Each alert's data-polling says where it stands: "waiting" for its next poll, or
// "stopped" (the task ended, is gone, or the user is signed out) after its last one.
// Its words come from its data-text-* attributes, in the user's language: whole
// sentences whose {task}, {error}, {done}, {total} and {time} are filled in here, with
// numbers and durations written for the page's language by Intl.
(function () {
  "use strict";
  var lang = document.documentElement.lang || undefined;
  var numbers = new Intl.NumberFormat(lang);
  var plurals = new Intl.PluralRules(lang);

  function interval(alert) { return parseInt(alert.dataset.pollMs, 10) || 1000; }

  function text(el, value) { el.textContent = value; }

  function sentence(template, values) {
    return template.replace(/\{(task|error|done|total|time)\}/g, function (_, name) { return values[name] || ""; });
  }

  // templates: a sentence for each of a few sample numbers (data-text-counts); the one for
  // n is the sample's of n's plural category, else the "other" one.
  function pluralOf(templates, n) {
    var category = plurals.select(n);
    var other = null;
    var samples = Object.keys(templates);
    for (var i = 0; i < samples.length; i++) {
      var sampleCategory = plurals.select(Number(samples[i]));
      if (sampleCategory === category) { return templates[samples[i]]; }
      if (sampleCategory === "other" && other === null) { other = templates[samples[i]]; }
    }
    return other !== null ? other : templates[samples[samples.length - 1]];
  }

  // "45 seconds", "3 minutes", "2 hours", as the browser writes them in the page's language;
  // rounded so that the estimate does not flicker from one poll to the next.
  function duration(seconds) {
    var s = Math.max(1, Math.ceil(seconds));
    var unit = "second";
    var n = s < 10 ? s : Math.ceil(s / 5) * 5;
    if (s >= 55) { unit = "minute"; n = Math.max(1, Math.round(s / 60)); }
    if (s >= 3570) { unit = "hour"; n = Math.round(s / 3600); }
    return new Intl.NumberFormat(lang, { style: "unit", unit: unit, unitDisplay: "long" }).format(n);
  }

  function dismissible(alert) {
    if (alert.querySelector(":scope > .close")) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.className = "close";
    button.setAttribute("aria-label", alert.dataset.textDismiss || "Dismiss");
    alert.classList.add("alert-dismissible");
    alert.appendChild(button);
  }

  // Buttons that wait for this task (the profile's export button) may be used again.
  function release(alert) {
    var selector = '[data-waits-for-task="' + CSS.escape(alert.dataset.taskId || "") + '"]';
    document.querySelectorAll(selector).forEach(function (button) {
      var reason = document.getElementById(button.getAttribute("aria-describedby") || "");
      if (reason) { reason.hidden = true; }
      button.removeAttribute("aria-describedby");
      button.removeAttribute("data-waits-for-task");
      button.disabled = false;
    });
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
    // The list of past exports keeps this one once the alert is gone.
    if (alert.dataset.exportsUrl) {
      var all = document.createElement("a");
      all.href = alert.dataset.exportsUrl;
      all.className = "exports-link";
      text(all, alert.dataset.textExports);
      message.appendChild(document.createTextNode(" "));
      message.appendChild(all);
    }
    ["progress", "task-details"].forEach(function (name) {
      var part = alert.querySelector("." + name);
      if (part) { part.remove(); }
    });
    release(alert);
  }

  function stop(alert, message) {
    alert.dataset.polling = "stopped";
    if (message) { alert.querySelector(".task-message").textContent = message; }
    dismissible(alert);
  }

  // Before its first report a task has told nothing: the bar stays indeterminate.
  function reported(task) {
    return task.total !== null && task.total !== undefined
      || (task.state !== "PENDING" && task.state !== "STARTED");
  }

  function showBar(alert, percent) {
    var bar = alert.querySelector(".progress-bar");
    if (bar) {
      bar.parentElement.classList.remove("progress-indeterminate");
      bar.style.width = percent + "%";
      bar.parentElement.setAttribute("aria-valuenow", percent);
    }
    var label = alert.querySelector(".task-percent");
    if (label) {
      text(label, percent + "%");
      label.hidden = false;
    }
  }

  // The time left, from the rate of posts between the first report this page saw and
  // the latest: unknown (hidden) until a second report has counted more.
  function showTimeLeft(alert, watch, task) {
    var label = alert.querySelector(".task-time-left");
    if (!label) { return; }
    var now = Date.now();
    if (watch.first === null) { watch.first = { done: task.done, time: now }; }
    var counted = task.done - watch.first.done;
    var seconds = (now - watch.first.time) / 1000;
    if (task.done >= task.total) {  // writing the last of it: nothing left to estimate
      label.hidden = true;
      return;
    }
    if (counted <= 0 || seconds <= 0) { return; }  // no second report yet (or the same one)
    text(label, sentence(alert.dataset.textTimeLeft, { time: duration((task.total - task.done) * seconds / counted) }));
    label.hidden = false;
  }

  function update(alert, watch, task) {
    if (!reported(task)) { return; }
    showBar(alert, Math.max(0, Math.min(100, task.progress || 0)));
    var counts = alert.querySelector(".task-counts");
    if (!counts) { return; }
    if (watch.counts && typeof task.total === "number") {
      text(counts, sentence(pluralOf(watch.counts, task.total),
                            { done: numbers.format(task.done), total: numbers.format(task.total) }));
      showTimeLeft(alert, watch, task);
    } else {
      text(counts, "");  // no longer "Waiting to start..."
    }
  }

  function poll(alert, watch) {
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
          release(alert);
          return;
        }
        update(alert, watch, task);
        if (task.state === "SUCCESS" || task.state === "FAILURE") {
          finish(alert, task);
          stop(alert);
        } else {
          alert.dataset.polling = "waiting";
          setTimeout(function () { poll(alert, watch); }, interval(alert));
        }
      })
      .catch(function () {  // the network or the server failed: try again, less often
        alert.dataset.polling = "waiting";
        setTimeout(function () { poll(alert, watch); }, interval(alert) * 3);
      });
  }

  // The page renders each reported bar's value as aria-valuenow; its width is set here,
  // through the CSSOM, because the Content-Security-Policy refuses style attributes in markup.
  function start(alert) {
    var bar = alert.querySelector(".progress[aria-valuenow]");
    if (bar) { showBar(alert, parseInt(bar.getAttribute("aria-valuenow"), 10) || 0); }
    var watch = { first: null, counts: alert.dataset.textCounts ? JSON.parse(alert.dataset.textCounts) : null };
    poll(alert, watch);
  }

  document.querySelectorAll(".task-alert[data-status-url]").forEach(start);
})();
