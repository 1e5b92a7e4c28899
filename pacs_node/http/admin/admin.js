/* pacs-node admin pages: fills the page from /api/v1 and acts through it.
   Served by the node itself (no build step, no CDN). Text from the API is only ever set
   with textContent, never parsed as HTML. */
"use strict";

const API = "/api/v1";
const REFRESH_MS = 10000;
const PRIORITIES = ["HIGH", "MEDIUM", "FAILED", "NOT_ANALYSED", "LOW"];
const STATES = ["receiving", "queued", "running", "done", "failed"];

async function api(path, options = {}) {
  const init = Object.assign({credentials: "same-origin"}, options);
  init.headers = Object.assign({"Accept": "application/json", "X-PACS-Node-Request": "1"},
                               options.headers || {});
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(API + path, init);
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("not signed in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(priority) {
  const name = priority || "NONE";
  return el("span", {class: `badge p-${name}`, text: priority ? priority.replace("_", " ") : "—"});
}

function age(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor(seconds % 3600 / 60)} min`;
  return `${Math.floor(seconds / 86400)} d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function status(text, isError = false) {
  const node = document.getElementById("status");
  if (node) { node.textContent = text; node.className = isError ? "error" : "muted"; }
}

function table(headers, rows, attrs = {}) {
  return el("table", attrs, el("thead", {}, el("tr", {}, headers.map(h => el("th", {text: h})))),
            el("tbody", {}, rows));
}

function main() { return document.getElementById("app"); }

/* -- worklist ------------------------------------------------------------------------- */

function filterForm(onChange) {
  const params = new URLSearchParams(location.search);
  const select = (name, label, values) => el("label", {}, label, el("select", {name},
    el("option", {value: "", text: "any"}),
    values.map(v => el("option", {value: v, text: v, selected: params.get(name) === v}))));
  const input = (name, label, type, extra = {}) => el("label", {}, label,
    el("input", Object.assign({name, type, value: params.get(name) || ""}, extra)));
  const form = el("form", {class: "filters", role: "search", onsubmit: e => {
      e.preventDefault(); onChange(form); }},
    select("priority", "Priority", [...PRIORITIES, "NONE"]),
    select("state", "State", STATES),
    input("body_part", "Body part", "text", {maxlength: 16, size: 8}),
    input("received_from", "Received from", "date"),
    input("received_to", "to", "date"),
    input("q", "Search", "search", {maxlength: 64, placeholder: "accession, description"}),
    el("button", {type: "submit", text: "Filter"}));
  form.addEventListener("change", () => onChange(form));
  return form;
}

function query(form) {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form)) if (value) params.append(key, value);
  return params;
}

function deliveryCell(deliveries) {
  const names = Object.keys(deliveries);
  if (!names.length) return "—";
  return names.map(n => el("div", {class: `d-${deliveries[n].state}`,
                                   text: `${n}: ${deliveries[n].state}`}));
}

async function worklistPage() {
  const root = main();
  const body = el("tbody");
  const form = filterForm(f => {
    history.replaceState(null, "", "?" + query(f).toString()); load(); });
  const count = el("p", {class: "muted"});
  root.append(form, count, el("table", {id: "worklist"},
    el("thead", {}, el("tr", {}, ["Priority", "Age", "Accession", "Body part", "Result",
                                   "Job", "Delivery"].map(h => el("th", {text: h})))), body));

  async function load() {
    try {
      const data = await api("/worklist?" + query(form).toString());
      body.replaceChildren(...data.studies.map(s => el("tr", {
          class: `sla-${s.sla}`, "data-study": s.study_instance_uid},
        el("td", {}, badge(s.triage_priority)),
        el("td", {class: "age", title: s.received_at, text: age(s.age_seconds)}),
        el("td", {}, el("a", {href: `/studies/${s.study_instance_uid}`,
                              text: s.accession_number || s.study_instance_uid})),
        el("td", {text: s.body_parts.join(", ") || "—"}),
        el("td", {class: `r-${s.result.state}`, text: s.result.text}),
        el("td", {text: s.job ? `${s.job.state} (${s.job.lane})` : s.state}),
        el("td", {}, deliveryCell(s.deliveries)))));
      count.textContent = `${data.studies.length} of ${data.total} studies, ` +
        `refreshed ${new Date().toLocaleTimeString()}`;
      status("");
    } catch (err) { status(String(err.message || err), true); }
  }
  await load();
  setInterval(load, REFRESH_MS);
}

/* -- study ---------------------------------------------------------------------------- */

async function studyPage() {
  const uid = document.body.dataset.study;
  const root = main();
  const message = el("p", {id: "message", role: "status"});
  const content = el("div");
  root.append(message, content);

  async function act(label, path, json) {
    try {
      const result = await api(path, {method: "POST", json: json === undefined ? {} : json});
      message.textContent = `${label}: ${JSON.stringify(result)}`;
      message.className = "ok";
      await load();
    } catch (err) { message.textContent = `${label} failed: ${err.message}`;
                    message.className = "error"; }
  }

  async function load() {
    let s;
    try { s = await api(`/studies/${encodeURIComponent(uid)}`); }
    catch (err) { status(String(err.message || err), true); return; }
    status("");
    document.querySelector("h1").replaceChildren("Study ", badge(s.triage_priority), " ",
                                                 s.accession_number || "");
    const reason = el("input", {name: "reason", id: "reason", maxlength: 500, required: true,
                                size: 40});
    const priority = el("select", {name: "priority", id: "priority"},
      PRIORITIES.map(p => el("option", {value: p, text: p, selected: p === s.triage_priority})));
    const actions = el("section", {class: "actions"},
      el("button", {type: "button", text: "Re-run",
                    onclick: () => act("Re-run", `/studies/${uid}/rerun`)}),
      el("button", {type: "button", text: "Retry delivery",
                    onclick: () => act("Retry delivery", `/studies/${uid}/retry-delivery`)}),
      el("a", {class: "button", href: s.viewer, target: "_blank", rel: "noopener",
               text: "Open in OHIF"}),
      el("form", {class: "inline", onsubmit: e => { e.preventDefault();
          act("Set priority", `/studies/${uid}/priority`,
              {priority: priority.value, reason: reason.value}); }},
        el("label", {for: "priority", text: "Priority"}), priority,
        el("label", {for: "reason", text: "Reason"}), reason,
        el("button", {type: "submit", text: "Set priority"})));
    const facts = el("dl", {class: "facts"}, [
      ["Study Instance UID", s.study_instance_uid], ["Study date", s.study_date || "—"],
      ["Description", s.study_description || "—"],
      ["Body part", s.body_parts.join(", ") || "—"], ["Age", age(s.age_seconds)],
      ["Result", s.result.text], ["Sender's urgency", s.requested_priority || "—"]
    ].map(([k, v]) => [el("dt", {text: k}), el("dd", {text: v})]));
    const timeline = el("ol", {class: "timeline", id: "timeline"}, s.timeline.map(e =>
      el("li", {class: `t-${e.step}`}, el("strong", {text: e.step}), " ",
         el("span", {class: "muted", text: when(e.at)}), " ", e.detail,
         e.error ? el("div", {class: "error", text: e.error}) : null)));
    const overlays = el("div", {class: "overlays", id: "overlays"},
      s.overlays.length ? s.overlays.map(o => el("figure", {},
        el("img", {src: o.rendered, alt: `overlay ${o.sop_instance_uid}`}),
        el("figcaption", {class: "muted", text: o.series_instance_uid}))) :
        el("p", {class: "muted", text: "No overlay (no current result)."}));
    const report = s.report ? table(["Concept", "Value"], s.report.rows.map(r =>
      el("tr", {}, el("td", {class: `depth-${Math.min(r.depth, 6)}`, text: r.concept}),
         el("td", {text: r.value}))), {id: "report"}) :
      el("p", {class: "muted", text: "No report yet."});
    const historyTable = table(["When", "Priority", "Source", "Who", "Why"],
      s.priority_history.map(e => el("tr", {}, el("td", {text: when(e.at)}),
        el("td", {}, badge(e.priority)), el("td", {text: e.source}),
        el("td", {text: e.actor}), el("td", {text: e.reason}))), {id: "priority-history"});
    content.replaceChildren(actions, facts,
      el("h2", {text: "Timeline"}), timeline,
      el("h2", {text: "Overlays"}), overlays,
      el("h2", {text: "Report (SR)"}), report,
      el("h2", {text: "Priority history"}), historyTable);
  }
  await load();
}

/* -- queues --------------------------------------------------------------------------- */

async function queuesPage() {
  const root = main();
  const message = el("p", {id: "message", role: "status"});
  const content = el("div");
  root.append(message, content);

  async function act(label, path, json) {
    try {
      await api(path, {method: "POST", json: json || {}});
      message.textContent = `${label}: done`; message.className = "ok";
      await load();
    } catch (err) { message.textContent = `${label} failed: ${err.message}`;
                    message.className = "error"; }
  }

  async function load() {
    let q;
    try { q = await api("/queues"); } catch (err) { status(String(err.message), true); return; }
    status("");
    const lanes = table(["Lane", "Queued", "Running"], q.lanes.map(l => el("tr", {},
      el("td", {text: `${l.lane} ${l.name}`}), el("td", {text: l.queued}),
      el("td", {text: l.running}))), {id: "lanes"});
    const controls = el("section", {id: "controls"}, Object.entries(q.controls).map(([name, c]) => {
      const reason = el("input", {name: "reason", maxlength: 500, size: 30,
                                  "aria-label": `Reason to pause or resume ${name}`});
      return el("div", {class: "control"},
        el("strong", {text: `${name}: ${c.paused ? "paused" : "running"}`}),
        c.changed_at ? el("span", {class: "muted",
          text: ` (by ${c.actor} at ${when(c.changed_at)}${c.reason ? ": " + c.reason : ""})`})
          : null, " ", reason,
        el("button", {type: "button", text: `${c.paused ? "Resume" : "Pause"} ${name}`,
                      onclick: () => act(`${c.paused ? "Resume" : "Pause"} ${name}`,
                        `/controls/${name}/${c.paused ? "resume" : "pause"}`,
                        {reason: reason.value})}));
    }));
    const failed = q.failed_jobs.length ? table(["Accession", "Job", "Failures", "Error", ""],
      q.failed_jobs.map(j => el("tr", {},
        el("td", {}, el("a", {href: `/studies/${j.study_instance_uid}`,
                              text: j.accession_number || j.study_instance_uid})),
        el("td", {text: j.job_id}), el("td", {text: j.failures}),
        el("td", {class: "error", text: j.error || ""}),
        el("td", {}, el("button", {type: "button", text: "Retry",
          onclick: () => act("Retry", `/studies/${j.study_instance_uid}/rerun`)})))),
      {id: "failed-jobs"}) : el("p", {class: "muted", text: "No failed job."});
    const destinations = table(["Destination", "Pending", "Failed", "Sent", "Last error",
                                "Last success"], q.destinations.map(d => el("tr", {},
      el("td", {text: d.name}), el("td", {text: d.pending}), el("td", {text: d.failed}),
      el("td", {text: d.sent}), el("td", {class: "error", text: d.last_error || ""}),
      el("td", {text: when(d.last_success_at)}))), {id: "destinations"});
    content.replaceChildren(el("h2", {text: "Processing and delivery"}), controls,
      el("h2", {text: "Jobs by lane"}), lanes, el("h2", {text: "Failed jobs"}), failed,
      el("h2", {text: "Destinations"}), destinations);
  }
  await load();
  setInterval(load, REFRESH_MS);
}

/* -- batches -------------------------------------------------------------------------- */

const BATCH_REFRESH_MS = 5000;
const BATCH_ACTIONS = [  // [label, path, the batch states it applies to]
  ["Pause", "pause", ["querying", "running"]],
  ["Resume", "resume", ["paused"]],
  ["Cancel", "cancel", ["querying", "running", "paused"]],
  ["Retry failed", "retry-failed", ["running", "paused", "done", "failed"]]];

function batchProgress(p) {
  const counts = Object.entries(p.counts).filter(([, n]) => n).map(([s, n]) => `${s} ${n}`);
  return el("div", {class: "batch-progress"},
    el("progress", {max: Math.max(p.total, 1), value: p.finished,
                    "aria-label": `batch ${p.batch.id}: ${p.finished} of ${p.total} finished`}),
    el("div", {text: `${p.finished} / ${p.total}`}),
    el("div", {class: "muted", text: counts.join(" · ") || "no study yet"}));
}

function batchEta(p) {
  if (p.eta_seconds !== null) return age(Math.round(p.eta_seconds)) +
    (p.per_hour ? ` (${Math.round(p.per_hour)}/h)` : "");
  if (!p.window_open) return `waiting for ${p.batch.window}`;
  return "—";
}

async function batchesPage() {
  const root = main();
  const message = el("p", {id: "message", role: "status"});
  const count = el("p", {class: "muted"});
  const body = el("tbody");
  root.append(message, count, el("table", {id: "batches"},
    el("thead", {}, el("tr", {}, ["Batch", "Source", "Model", "Deliver", "State", "Progress",
                                   "ETA", ""].map(h => el("th", {text: h})))), body));

  async function act(label, id, path) {
    const question = `Cancel batch ${id}? Studies not yet brought in are skipped.`;
    if (path === "cancel" && !confirm(question)) return;
    try {
      await api(`/batches/${id}/${path}`, {method: "POST", json: {}});
      message.textContent = `${label} batch ${id}: done`; message.className = "ok";
    } catch (err) { message.textContent = `${label} batch ${id} failed: ${err.message}`;
                    message.className = "error"; }
    await load();
  }

  async function load() {
    let data;
    try { data = await api("/batches"); }
    catch (err) { status(String(err.message || err), true); return; }
    status("");
    body.replaceChildren(...data.batches.map(p => {
      const b = p.batch;
      const criteria = Object.entries(b.criteria || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      return el("tr", {"data-batch": b.id, class: `b-${b.state}`},
        el("td", {}, el("strong", {text: `#${b.id}`}), " ", b.name || "",
           el("div", {class: "muted", text: `by ${b.created_by || "?"}, ${when(b.created_at)}`})),
        el("td", {}, b.source === "remote" ? `remote ${b.remote}` : "local",
           criteria ? el("div", {class: "muted", text: criteria}) : null),
        el("td", {text: b.models || b.model || "—"}),
        el("td", {text: b.deliver}),
        el("td", {}, el("span", {class: `state s-${b.state}`, text: b.state}),
           b.reason ? el("div", {class: "muted", text: b.reason}) : null),
        el("td", {}, batchProgress(p)),
        el("td", {text: batchEta(p)}),
        el("td", {class: "batch-actions"},
          BATCH_ACTIONS.filter(([, path, states]) => states.includes(b.state) &&
                               (path !== "retry-failed" || p.counts.failed || b.state === "failed"))
            .map(([label, path]) => el("button", {type: "button", text: label,
                                                  onclick: () => act(label, b.id, path)})),
          el("a", {class: "button", href: `${API}/batches/${b.id}/export?format=csv`,
                   download: `batch-${b.id}.csv`, text: "Export CSV"})));
    }));
    const n = data.batches.length;
    count.textContent = `${n} batch${n === 1 ? "" : "es"}, refreshed ` +
      `${new Date().toLocaleTimeString()} (create one with pacs-node batch create)`;
  }
  await load();
  setInterval(load, BATCH_REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const page = {worklist: worklistPage, study: studyPage, queues: queuesPage,
                batches: batchesPage}[document.body.dataset.page];
  if (page) page().catch(err => status(String(err.message || err), true));
});
