// dispyadmin's page: polls GET /nodes, keeps a row per node (forms are kept while the figures update),
// and sends each form as a POST with the session's CSRF token (GET /session gives it).
"use strict";

let csrf = "";
let pollMs = 5000;
const rows = new Map();

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

function input(name, type, placeholder, label) {
  const el = document.createElement("input");
  el.name = name;
  el.type = type;
  el.placeholder = placeholder;
  el.setAttribute("aria-label", label);
  if (type === "number") el.step = "1";
  return el;
}

function form(action, fields, buttonText, node, confirmText) {
  const f = document.createElement("form");
  f.dataset.action = action;
  fields.forEach((field) => f.appendChild(field));
  const button = text("button", buttonText);
  button.type = "submit";
  f.appendChild(button);
  f.addEventListener("submit", (event) => {
    event.preventDefault();
    if (confirmText && !window.confirm(confirmText)) return;
    const params = new URLSearchParams(new FormData(f));
    params.set("node", node);
    post(action, params);
  });
  return f;
}

function message(content, ok) {
  const el = document.getElementById("message");
  el.textContent = content;
  el.className = ok ? "ok" : "";
}

async function post(action, params) {
  try {
    const response = await fetch(action, {
      method: "POST",
      headers: {"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
      body: params.toString(),
      credentials: "same-origin",
    });
    const data = await response.json();
    if (!response.ok) {
      message(`${params.get("node") || ""} ${action}: ${data.error}`, false);
    } else {
      message(`${params.get("node") || ""} ${action}: done`, true);
      if (data.node) update(data);
    }
  } catch (error) {
    message(`${action} failed: ${error}`, false);
  }
}

function newRow(node) {
  const tr = document.createElement("tr");
  tr.dataset.node = node;
  for (const name of ["node", "name", "cpus", "busy", "jobs", "state", "service", "serve", "clients"]) {
    tr.appendChild(text("td", "", name));
  }
  const manage = text("td", "", "manage");
  manage.appendChild(form("/set_cpus", [input("cpus", "number", "CPUs", "CPUs")], "Set CPUs", node));
  manage.appendChild(form("/set_service", [input("start", "text", "start", "service start HH:MM"),
                                           input("stop", "text", "stop", "service stop HH:MM"),
                                           input("end", "text", "end", "service end HH:MM")],
                          "Set window", node));
  manage.appendChild(form("/serve", [input("computations", "number", "N", "computations to serve")],
                          "Serve N", node));
  const wait = document.createElement("input");
  wait.type = "hidden";
  wait.name = "wait";
  wait.value = "1";
  manage.appendChild(form("/shutdown", [wait], "Shutdown", node, `Stop node ${node} after its running jobs?`));
  tr.appendChild(manage);
  document.querySelector("#nodes tbody").appendChild(tr);
  rows.set(node, tr);
  return tr;
}

function update(entry) {
  const tr = rows.get(entry.node) || newRow(entry.node);
  const cell = (name) => tr.querySelector(`td.${name}`);
  cell("node").textContent = entry.node;
  cell("name").textContent = entry.name || "";
  if (entry.error) {
    tr.classList.add("unreachable");
    for (const name of ["cpus", "busy", "jobs", "service", "serve", "clients"]) cell(name).textContent = "";
    cell("state").textContent = entry.error;
    return;
  }
  tr.classList.remove("unreachable");
  cell("cpus").textContent = `${entry.cpus} of ${entry.max_cpus}`;
  cell("busy").textContent = String(entry.busy);
  cell("jobs").textContent = String(entry.jobs_done);
  cell("state").textContent = entry.accepting ? "accepting jobs" : `not accepting: ${entry.not_accepting}`;
  const times = ["start", "stop", "end"].filter((k) => entry[`service_${k}`])
    .map((k) => `${k} ${entry[`service_${k}`]}`);
  cell("service").textContent = times.length ? `${times.join(", ")} (${entry.service_state})` : "always";
  cell("serve").textContent = entry.serve ? `${entry.served} of ${entry.serve}` : "no limit";
  cell("clients").textContent = entry.clients.length ? entry.clients.join("; ") : "none";
}

async function refresh() {
  try {
    const response = await fetch("/nodes", {credentials: "same-origin"});
    const data = await response.json();
    if (!response.ok) throw new Error(data.error);
    data.nodes.forEach(update);
    document.getElementById("empty").hidden = data.nodes.length > 0;
    document.getElementById("discover").hidden = !data.discovering;
    document.getElementById("status").textContent =
      `${data.nodes.length} node(s), updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("status").textContent = `cannot update: ${error.message}`;
  }
  setTimeout(refresh, pollMs);
}

async function start() {
  const response = await fetch("/session", {credentials: "same-origin"});
  const session = await response.json();
  csrf = session.csrf || "";
  pollMs = Math.max(500, (session.poll_sec || 5) * 1000);
  document.getElementById("discover").addEventListener("click", () => post("/discover", new URLSearchParams()));
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
