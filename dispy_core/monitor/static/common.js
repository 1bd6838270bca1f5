// Shared by the monitor's pages: JSON from the server, CSRF-protected POSTs, formatting. Data reaches the
// page only through textContent (never as HTML).
"use strict";

const dispy = (() => {
  let session = null;

  async function sessionInfo() {
    if (session === null) {
      session = await getJSON("/session");
    }
    return session;
  }

  async function getJSON(path) {
    const reply = await fetch(path, {credentials: "same-origin", cache: "no-store"});
    const data = await reply.json();
    if (!reply.ok) throw new Error(data.error || reply.statusText);
    return data;
  }

  async function post(path, params) {
    const info = await sessionInfo();
    const body = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      for (const one of (Array.isArray(value) ? value : [value])) body.append(name, String(one));
    }
    const reply = await fetch(path, {
      method: "POST", credentials: "same-origin", body: body,
      headers: {"X-CSRF-Token": info.csrf || "", "Content-Type": "application/x-www-form-urlencoded"},
    });
    const data = await reply.json();
    if (!reply.ok) throw new Error(data.error || reply.statusText);
    return data;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function time(t) {
    return t ? new Date(t * 1000).toLocaleTimeString() : "";
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function showError(err) {
    const el = document.getElementById("error");
    if (el) el.textContent = err ? String(err.message || err) : "";
  }

  function stamp() {
    const el = document.getElementById("updated");
    if (el) el.textContent = "updated " + new Date().toLocaleTimeString();
  }

  // Calls update() now and then every poll_sec seconds (re-read after each call, so /update takes effect).
  async function every(update) {
    const info = await sessionInfo();
    let pollSec = info.poll_sec || 10;
    const run = async () => {
      try {
        const next = await update();
        if (next) pollSec = next;
        showError(null);
        stamp();
      } catch (err) {
        showError(err);
      }
      setTimeout(run, pollSec * 1000);
    };
    run();
  }

  return {sessionInfo, getJSON, post, bytes, time, cell, showError, every};
})();
