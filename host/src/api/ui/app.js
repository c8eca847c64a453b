// Live updates for the status page: when the daemon signals a change, fetch the server-rendered
// content again and swap it in. All escaping happens on the server; nothing here builds markup
// from data.
"use strict";
(function () {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  if (!main || !window.EventSource) {
    return;
  }
  let pending = false;
  async function refresh() {
    if (pending) {
      return;
    }
    pending = true;
    try {
      const r = await fetch("/ui/fragment", { credentials: "same-origin", cache: "no-store" });
      if (r.ok) {
        main.innerHTML = await r.text();
        live.textContent = "live";
        live.className = "live on";
      } else {
        live.textContent = "disconnected (" + r.status + ")";
        live.className = "live off";
      }
    } catch (e) {
      live.textContent = "disconnected";
      live.className = "live off";
    } finally {
      pending = false;
    }
  }
  const source = new EventSource("/ui/stream");
  source.addEventListener("change", refresh);
  source.addEventListener("open", function () {
    live.textContent = "live";
    live.className = "live on";
    refresh();
  });
  source.addEventListener("error", function () {
    live.textContent = "reconnecting";
    live.className = "live off";
  });
})();
