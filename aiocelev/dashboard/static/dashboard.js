// aiocelev dashboard: live updates over Server-Sent Events, and action buttons.
// No framework, no build step. Server-rendered HTML is swapped in as is: every
// value in it was escaped by the server's templates.
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base || "";
  var live = document.getElementById("live");
  var stateEl = document.querySelector("[data-testid=live-state]");
  var version = Number(body.dataset.version);
  var busy = false;
  var again = false;

  function setState(text, cls) {
    if (!stateEl) return;
    stateEl.textContent = text;
    stateEl.className = "live-state " + cls;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname + location.search, {
      headers: { "X-Aiocelev-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (r) {
      return r.ok || r.status === 404 ? r.text() : null;
    }).then(function (html) {
      if (html !== null && live) {
        live.innerHTML = html;
        body.dataset.version = String(version);
      }
    }).catch(function () { /* the stream's error handler reports it */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  if (live && live.dataset.static === "1") {
    setState("history: not live", "off");
  } else if (live && window.EventSource) {
    var source = new EventSource(base + "/events/stream");
    source.addEventListener("open", function () { setState("live", "on"); });
    source.addEventListener("error", function () { setState("reconnecting…", "off"); });
    source.addEventListener("update", function (ev) {
      var data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      setState(data.connected ? "live" : "broker disconnected", data.connected ? "on" : "off");
      if (data.version !== version) {
        version = data.version;
        refresh();
      }
    });
  }

  // Actions: <form data-action="URL" data-confirm="..."> posts its fields with
  // the header the server requires of browser requests (CSRF protection).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form || !form.dataset || !form.dataset.action) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var params = new URLSearchParams(new FormData(form));
    fetch(form.dataset.action + (params.toString() ? "?" + params.toString() : ""), {
      method: "POST",
      headers: { "X-Aiocelev-Action": "1" },
      credentials: "same-origin"
    }).then(function (r) {
      return r.json().catch(function () { return { error: "HTTP " + r.status }; });
    }).then(function (data) {
      var box = document.getElementById("action-result");
      if (!box) return;
      var lines = [data.message || data.error || ""];
      (data.replies || []).forEach(function (reply) {
        lines.push(reply.node + ": " + (reply.ok ? "OK" : "ERROR") + " " + JSON.stringify(reply.payload));
      });
      box.textContent = lines.join("\n");   // text, never markup
      box.className = "action-result " + (data.error ? "bad" : "good");
      box.hidden = false;
    });
  });
})();
