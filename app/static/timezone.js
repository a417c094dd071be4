// Tells the server the browser's time zone, so that dates are shown in it: the IANA name
// (e.g. "Asia/Shanghai") in the "tz" cookie, read by app/i18n.py, for a year; written
// again only when it changes. IANA names need no encoding in a cookie.
(function () {
  "use strict";
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
  if (!zone || !/^[A-Za-z0-9_+\/-]+$/.test(zone)) { return; }
  var current = document.cookie.split("; ").filter(function (pair) { return pair.indexOf("tz=") === 0; })[0];
  if (current === "tz=" + zone) { return; }
  document.cookie = "tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax";
})();
