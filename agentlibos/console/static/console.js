// The agentlibos console page. Every string from the supervisor was written, directly or
// not, by an agent: it goes into the DOM through textContent only, never as HTML.
"use strict";

const POLL_MS = 1000;
const MAX_CARDS = 200; // past this, the page says how many more and where to see them
const MAX_ROWS = 500; // of the process table, in tree order
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const queueRows = new Map(); // id -> card element; kept so a half-typed reason survives polls

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function text(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

// An audit detail is a JSON object; shown as `key: value; ...`, cut short, whole on hover.
const MAX_DETAIL = 240;
function detailCell(detail) {
  let full = text(detail);
  if (detail && typeof detail === "object" && !Array.isArray(detail)) {
    full = Object.entries(detail).map(([k, v]) => k + ": " + text(v)).join("; ");
  }
  const shown = full.length > MAX_DETAIL ? full.slice(0, MAX_DETAIL - 1) + "…" : full;
  return el("td", {class: "detail", title: full}, shown);
}

function when(ts) {
  if (typeof ts !== "number") return "";
  return new Date(ts * 1000).toLocaleTimeString();
}

function show(id, message) {
  const node = document.getElementById(id);
  node.textContent = text(message);
  node.hidden = !message;
}

let flashTimer = null;
function flash(message, bad) {
  const node = document.getElementById("flash");
  node.textContent = message;
  node.className = bad ? "flash flash-bad" : "flash";
  node.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { node.hidden = true; }, bad ? 10000 : 4000);
}

async function change(op, body) {
  let reply;
  try {
    const r = await fetch("/api/" + op, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body),
    });
    reply = await r.json();
  } catch (e) {
    flash(op + " #" + body.id + " failed: the console did not answer (" + e + ")", true);
    return;
  }
  if (reply.ok) {
    flash("#" + body.id + ": " + text(reply.state || op) +
          (body.always ? " for the rest of the process's life" : op === "approve" ? " once" : ""));
  } else {
    flash(op + " #" + body.id + " refused: " + text(reply.error && reply.error.message), true);
  }
  poll();
}

function field(label, value, cls) {
  return el("div", {class: "field"}, el("span", {class: "label"}, label),
            el("span", {class: "value " + (cls || "")}, text(value)));
}

function approvalCard(item) {
  const reason = el("input", {type: "text", class: "reason", placeholder: "reason (optional)",
                              maxLength: 4000});
  const approve = el("button", {class: "approve", type: "button",
                                title: "this one call, with exactly these arguments"},
                     "Approve once");
  const always = el("button", {class: "always", type: "button",
                               title: "the process holds this capability for the rest of its life"},
                    "Approve always");
  const deny = el("button", {class: "deny", type: "button"}, "Deny");
  approve.addEventListener("click", () => change("approve", {id: item.id, always: false}));
  always.addEventListener("click", () => change("approve", {id: item.id, always: true}));
  deny.addEventListener("click", () =>
    change("deny", {id: item.id, reason: reason.value || null}));
  return el("div", {class: "actions"}, approve, always, reason, deny);
}

// A question the operator will not answer is declined: its human.ask fails with
// PermissionDenied carrying the reason (the same "deny" as an approval's).
function declineBox(item) {
  const reason = el("input", {type: "text", class: "reason", placeholder: "reason (optional)",
                              maxLength: 4000});
  const decline = el("button", {class: "deny decline", type: "button",
                                title: "do not answer: the agent's question fails"},
                     "Decline");
  decline.addEventListener("click", () =>
    change("deny", {id: item.id, reason: reason.value || null}));
  return el("div", {class: "actions"}, reason, decline);
}

function questionCard(item) {
  if (Array.isArray(item.choices) && item.choices.length) {
    const box = el("div", {class: "actions"});
    for (const choice of item.choices) {
      const b = el("button", {class: "choice", type: "button"}, text(choice));
      b.addEventListener("click", () => change("answer", {id: item.id, text: String(choice)}));
      box.append(b);
    }
    return el("div", {}, box, declineBox(item));
  }
  const input = el("input", {type: "text", class: "answer-text", placeholder: "your answer",
                             maxLength: 4000});
  const send = el("button", {class: "answer", type: "button"}, "Answer");
  const go = () => { if (input.value.trim()) change("answer", {id: item.id, text: input.value}); };
  send.addEventListener("click", go);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  return el("div", {}, el("div", {class: "actions"}, input, send), declineBox(item));
}

function card(item) {
  const isQ = item.kind === "question";
  const head = el("div", {class: "card-head"},
    el("span", {class: "kind kind-" + (isQ ? "question" : "approval")},
       isQ ? "question" : "approval"),
    el("span", {class: "id"}, "#" + text(item.id)),
    el("span", {class: "who"}, "pid " + text(item.pid) + " · " + text(item.image)),
    el("span", {class: "muted"}, when(item.created_at)));
  const body = el("div", {class: "card-body"},
    isQ && item.summary === item.question ? null : el("div", {class: "summary"}, text(item.summary)),
    isQ ? field("question", item.question, "question") : field("request", item.request, "request"),
    isQ ? null : field("call", item.call),
    isQ && item.topic ? field("topic", item.topic) : null,
    isQ ? null : field("digest", text(item.digest).slice(0, 16) + "…", "digest"));
  return el("div", {class: "card", "data-id": String(item.id), "data-kind": isQ ? "question" : "approval"},
            head, body, isQ ? questionCard(item) : approvalCard(item));
}

function renderQueue(section) {
  if (section.error) {
    show("queue-error", "cannot list the queue: " + text(section.error.message));
    return;
  }
  show("queue-error", "");
  const pending = (section.items || []).filter((i) => i.state === "pending");
  const items = pending.slice(0, MAX_CARDS);
  const box = document.getElementById("queue");
  const seen = new Set();
  for (const item of items) {
    seen.add(item.id);
    if (!queueRows.has(item.id)) {
      const node = card(item);
      queueRows.set(item.id, node);
      box.append(node);
    }
  }
  for (const [id, node] of queueRows) {
    if (!seen.has(id)) { node.remove(); queueRows.delete(id); }
  }
  document.getElementById("queue-count").textContent = String(pending.length);
  document.getElementById("queue-empty").hidden = pending.length > 0;
  show("queue-more", pending.length > items.length
    ? (pending.length - items.length) + " more below these; `agentlibos approvals` lists them all"
    : "");
}

function treeOrder(rows) {
  const pids = new Set(rows.map((r) => r.pid));
  const kids = new Map();
  for (const r of rows) {
    const parent = pids.has(r.ppid) ? r.ppid : null;
    if (!kids.has(parent)) kids.set(parent, []);
    kids.get(parent).push(r);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const r of kids.get(parent) || []) {
      out.push([depth, r]);
      if (depth < 64) walk(r.pid, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

function renderProcesses(section) {
  if (section.error) {
    show("processes-error", "cannot list processes: " + text(section.error.message));
    return;
  }
  show("processes-error", "");
  const rows = section.processes || [];
  const body = document.getElementById("processes");
  body.replaceChildren();
  for (const [depth, r] of treeOrder(rows).slice(0, MAX_ROWS)) {
    const pidCell = el("td", {class: "pid"}, "  ".repeat(depth) + (depth ? "└ " : "") + text(r.pid));
    body.append(el("tr", {class: "state-" + text(r.state).replace(/[^a-z-]/g, ""), "data-pid": String(r.pid)},
      pidCell, el("td", {}, text(r.image)),
      el("td", {class: "state"}, text(r.state) + (r.evicted ? " (evicted)" : "")),
      el("td", {class: "wait"}, text(r.wait)), el("td", {}, text(r.exit_reason)),
      el("td", {class: "muted"}, when(r.started_at))));
  }
  document.getElementById("processes-count").textContent = String(rows.length);
}

function renderAudit(section) {
  const badge = document.getElementById("verify");
  if (section.error) {
    show("audit-error", "cannot read the audit: " + text(section.error.message));
    badge.textContent = "chain: unknown";
    badge.className = "pill pill-wait";
    return;
  }
  show("audit-error", "");
  const v = section.verify || {};
  if (v.ok) {
    badge.textContent = "chain verified: " + text(v.count) + " records";
    badge.className = "pill pill-ok";
  } else {
    badge.textContent = "chain BROKEN" +
      (v.first_bad_seq !== null && v.first_bad_seq !== undefined ? " at seq " + text(v.first_bad_seq) : "") +
      (v.problem ? ": " + text(v.problem) : "");
    badge.className = "pill pill-bad";
  }
  if (v.head && v.head.hash) badge.title = "head seq " + text(v.head.seq) + " " + text(v.head.hash);
  const body = document.getElementById("audit");
  body.replaceChildren();
  const records = (section.records || []).slice().reverse(); // newest first
  for (const r of records) {
    body.append(el("tr", {class: "verdict-" + text(r.verdict).replace(/[^a-z-]/g, "")},
      el("td", {}, text(r.seq)), el("td", {class: "muted time"}, when(r.ts)), el("td", {}, text(r.pid)),
      el("td", {}, text(r.call)), el("td", {class: "request"}, text(r.request)),
      el("td", {class: "verdict"}, text(r.verdict)), detailCell(r.detail)));
  }
}

function setSupervisor(ok, message) {
  document.body.classList.toggle("down", !ok); // what still shows is stale: dim it
  const pill = document.getElementById("supervisor");
  pill.textContent = message;
  pill.className = ok ? "pill pill-ok" : "pill pill-bad";
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const r = await fetch("/api/state", {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) {
      setSupervisor(false, "signed out");
      show("banner", "This console session is no longer valid (was the console restarted?). " +
                     "Open the URL that `agentlibos console` printed.");
      return;
    }
    const s = await r.json();
    if (!s.ok) {
      setSupervisor(false, "supervisor down");
      show("banner", text(s.error && s.error.message));
      return;
    }
    show("banner", "");
    setSupervisor(true, "supervisor pid " + text(s.supervisor.pid) + " (" + text(s.supervisor.mode) + ")");
    renderQueue(s.queue);
    renderProcesses(s.processes);
    renderAudit(s.audit);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    setSupervisor(false, "console unreachable");
    show("banner", "The console itself does not answer (" + e + "). Is `agentlibos console` still running?");
  } finally {
    polling = false;
  }
}

poll();
setInterval(poll, POLL_MS);
