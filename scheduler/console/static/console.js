// insight-scheduler console: live refresh without a full reload.
// Every element with data-refresh="URL" gets its inner HTML replaced by the fragment the
// server renders at URL, every data-interval milliseconds (the server escapes every value).
// Signed out meanwhile: the fragment answers 401 and the page goes to the sign-in form.
(function () {
  "use strict";

  function schedule(element) {
    var interval = parseInt(element.getAttribute("data-interval") || "3000", 10);
    window.setTimeout(function () { refresh(element); }, interval);
  }

  function refresh(element) {
    if (document.hidden) { schedule(element); return; }
    window.fetch(element.getAttribute("data-refresh"), {
      credentials: "same-origin",
      headers: { "X-Console-Fragment": "1" },
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) { window.location.assign("/console/login"); return null; }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null) {
        element.innerHTML = html;
        element.setAttribute("data-refreshed", String(Date.now()));
      }
    }).catch(function () {
      // the daemon restarting: keep the last picture and try again
    }).then(function () { schedule(element); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < live.length; i++) { schedule(live[i]); }
  });
})();
