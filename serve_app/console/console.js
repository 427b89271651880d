// raytenant console: plain JavaScript, no build step. Talks to the same HTTP API and WebSocket
// protocol as any client (docs/http-api.md, docs/websocket-protocol.md).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("raytenant.token") || "",
  lastSeq: null, ws: null, retry: 0, flows: new Map(), selected: null, feed: new Map(), feedLoaded: new Set(),
  mapping: null,
  costTimer: null, stopped: false,
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: { "Authorization": `Bearer ${state.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    error.status = response.status; error.code = data.error && data.error.code;
    throw error;
  }
  return data;
}

function claims(token) {
  try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))); } catch { return {}; }
}

function setStatus(text, kind) { const s = $("status"); s.textContent = text; s.className = `status ${kind}`; }
const money = (v) => `$${Number(v || 0).toFixed(6)}`;

// -- sign in --------------------------------------------------------------------------------------
async function signIn(token) {
  state.token = token.trim();
  try {
    await api("GET", "/v1/flows?limit=1");
  } catch (error) {
    state.token = "";
    $("sign-in-error").textContent = error.status === 401 ? "That token was not accepted." : error.message;
    return;
  }
  sessionStorage.setItem("raytenant.token", state.token);
  $("sign-in").hidden = true; $("console").hidden = false; $("sign-out").hidden = false;
  $("tenant").textContent = `tenant ${claims(state.token).tenant || ""}`;
  state.stopped = false;
  await loadFlows();
  refreshCosts();
  state.costTimer = setInterval(refreshCosts, 10000);
  connect();
}

function signOut() {
  sessionStorage.removeItem("raytenant.token");
  state.stopped = true; clearInterval(state.costTimer);
  if (state.ws) state.ws.close();
  location.reload();
}

// -- live stream ----------------------------------------------------------------------------------
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = state.lastSeq !== null ? `?last_seq=${state.lastSeq}` : "";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ws${resume}`, ["raytenant", state.token]);
  state.ws = ws;
  setStatus("Connecting…", "waiting");
  ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe_flow", flow_id: "*" }));
  ws.onmessage = (message) => handle(JSON.parse(message.data));
  ws.onclose = (event) => {
    if (state.stopped) return;
    if (event.code === 4001) { setStatus("Token refused: sign in again", "offline"); return; }
    const wait = Math.min(8000, 500 * 2 ** state.retry++);
    setStatus(`Disconnected (${event.code}); reconnecting in ${Math.round(wait / 1000)} s`, "offline");
    setTimeout(connect, wait);
  };
}

function handle(message) {
  if (typeof message.seq === "number") state.lastSeq = Math.max(state.lastSeq ?? 0, message.seq);
  switch (message.type) {
    case "connection_established":
      if (state.lastSeq === null) state.lastSeq = message.last_seq;
      state.retry = 0;
      setStatus(`Live · seq ${state.lastSeq}`, "online");
      break;
    case "resume_failed": loadFlows(); break;
    case "flow_update": onFlowUpdate(message); break;
    case "agent_insight": addFeed(message); onInsight(message); break;
    case "error_notification": addFeed(message); break;
    case "flow_completed": addFeed(message); refreshCosts(); break;
    case "budget_alert": addAlert(message.data); break;
    case "agent_message": addMailbox(message.data); break;
    default: break;
  }
  if (typeof message.seq === "number") setStatus(`Live · seq ${state.lastSeq}`, "online");
}

const insightText = (data) => {
  const insight = data.insight || {};
  if (insight.type === "phase_started") return `${data.agent_name}: started ${insight.phase}`;
  if (insight.type === "phase_completed") return `${data.agent_name}: ${insight.phase} done — ${insight.results_summary || ""}`;
  if (insight.type === "mapping_corrected") return `${data.agent_name}: mapping corrected (${insight.corrections.length})`;
  if (insight.type === "correction_applied") return `${data.agent_name}: ${insight.phase} corrected (${insight.corrections.length})`;
  return `${data.agent_name}: ${JSON.stringify(insight)}`;
};
const errorText = (error) => `${error.reason || "error"}${error.phase ? ` in ${error.phase}` : ""}: ${error.message || ""}`;

// -- flows ----------------------------------------------------------------------------------------
async function loadFlows() {
  const { flows } = await api("GET", "/v1/flows?limit=50");
  for (const flow of flows.reverse()) state.flows.set(flow.flow_id, flow);
  renderFlows();
}

function onFlowUpdate(message) {
  const known = state.flows.get(message.flow_id);
  if (!known) { loadFlows(); return; }
  Object.assign(known, { status: message.data.status, phase: message.data.phase ?? known.phase,
                         progress: message.data.progress ?? known.progress });
  renderFlows();
  refreshCostsSoon();
}

function onInsight(message) {
  const insight = message.data.insight || {};
  if (message.flow_id === state.selected && insight.phase === "field_mapping"
      && ["phase_completed", "mapping_corrected"].includes(insight.type)) loadMapping(message.flow_id);
  if (message.flow_id === state.selected && DECISIONS.some((d) => d.phase === insight.phase)
      && ["phase_completed", "correction_applied"].includes(insight.type)) loadDecisions(message.flow_id);
}

function renderFlows() {
  const list = $("flows");
  list.replaceChildren();
  const flows = [...state.flows.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  for (const flow of flows) {
    const label = `${flow.name}: ${flow.status}${flow.phase ? `, ${flow.phase}` : ""}, ${flow.progress} %`;
    list.append(el("li", { class: flow.flow_id === state.selected ? "selected" : "", "data-flow": flow.flow_id },
      el("div", { class: "flow-head" },
        el("strong", { text: `${flow.name} (${flow.kind || "discovery"})` }),
        el("span", { class: "flow-status", text: `${flow.status}${flow.phase ? ` · ${flow.phase}` : ""}` })),
      el("progress", { max: 100, value: flow.progress || 0, "aria-label": label }),
      el("span", { class: "muted flow-progress", text: `${flow.progress || 0} %` }), " ",
      el("button", { type: "button", class: "secondary", "aria-pressed": flow.flow_id === state.selected ? "true" : "false",
                     onclick: () => select(flow.flow_id), "aria-label": `Show ${flow.name} ${flow.flow_id.slice(0, 8)}` },
         "Show")));
  }
}

async function startFlow(kind = "discovery") {
  $("flow-error").textContent = "";
  try {
    const sample = await (await fetch("/v1/samples/inventory")).json();
    const flow = await api("POST", "/v1/flows", { name: sample.name, kind, data: sample.data,
                                                 target_schema: sample.target_schema });
    state.flows.set(flow.flow_id, flow);
    select(flow.flow_id);
  } catch (error) {
    $("flow-error").textContent = error.code === "too_many_flows" ? "Too many flows running; wait for one to end." : error.message;
  }
}

function select(flowId) {
  state.selected = flowId;
  renderFlows();
  $("feed-flow").textContent = `· ${(state.flows.get(flowId) || {}).name || ""} ${flowId.slice(0, 8)}`;
  renderFeed();
  loadFeed(flowId);
  loadMapping(flowId);
  loadDecisions(flowId);
}

// A feed entry of a stream event, or null for events the feed does not show.
function feedItem(message) {
  const at = new Date(message.ts || Date.now()).toLocaleTimeString();
  if (message.type === "agent_insight") return { seq: message.seq, at, text: insightText(message.data), isError: false };
  if (message.type === "error_notification") {
    return { seq: message.seq, at, text: `Error: ${errorText(message.data.error)}`, isError: true };
  }
  if (message.type === "flow_completed") return { seq: message.seq, at, text: "Flow completed", isError: false };
  return null;
}

function addFeed(message) {
  const item = feedItem(message);
  if (!message.flow_id || !item) return;
  const items = state.feed.get(message.flow_id) || [];
  if (items.some((known) => known.seq === item.seq)) return;  // a replayed event after a resume
  state.feed.set(message.flow_id, [...items, item].slice(-200));
  if (message.flow_id === state.selected) renderFeed();
}

// What the flow's agents said before this page was open: its events from the tenant's stream.
async function loadFeed(flowId) {
  if (state.feedLoaded.has(flowId)) return;
  state.feedLoaded.add(flowId);
  try {
    const { events } = await api("GET", `/v1/events?flow_id=${encodeURIComponent(flowId)}&after=0&limit=1000`);
    const live = state.feed.get(flowId) || [];
    const seen = new Set(live.map((item) => item.seq));
    const past = events.filter((e) => !seen.has(e.seq)).map(feedItem).filter(Boolean);
    state.feed.set(flowId, [...past, ...live].sort((a, b) => a.seq - b.seq).slice(-200));
  } catch (error) {
    state.feedLoaded.delete(flowId);  // try again next time it is shown
  }
  if (flowId === state.selected) renderFeed();
}

function renderFeed() {
  const items = state.feed.get(state.selected) || [];
  $("feed").replaceChildren(...items.map((item) => el("li", { class: item.isError ? "err" : "", role: item.isError ? "alert" : null },
    `${item.at} ${item.text}`)));
}

// -- mapping: accept or correct, and see what learning recommends now -----------------------------
async function loadMapping(flowId) {
  const flow = await api("GET", `/v1/flows/${flowId}`);
  const mapping = flow.results && flow.results.field_mapping;
  $("mapping-flow").textContent = `· ${flow.name} ${flowId.slice(0, 8)}`;
  if (!mapping || flowId !== state.selected) {
    $("mapping").hidden = true; $("mapping-empty").hidden = false; state.mapping = null; return;
  }
  const recommended = await api("POST", "/v1/mappings", { source_schema: mapping.source_schema,
                                                          target_schema: mapping.target_schema, source_name: flow.name });
  state.mapping = { flowId, mapping, recommended };
  renderMapping();
}

function targetsOf(schema) {
  const fields = Array.isArray(schema) ? schema : (schema.fields || Object.keys(schema).map((name) => ({ name })));
  return fields.map((f) => (typeof f === "string" ? f : f.name));
}

function renderMapping() {
  const { mapping, recommended } = state.mapping;
  const proposed = new Map(mapping.mappings.map((m) => [m.source_field, m]));
  const now = new Map(recommended.mappings.map((m) => [m.source_field, m]));
  const targets = targetsOf(mapping.target_schema);
  const rows = targetsOf(mapping.source_schema).map((source) => {
    const current = proposed.get(source);
    const rec = now.get(source);
    const select = el("select", { "aria-label": `Correct target for ${source}` },
      ...(current ? [] : [el("option", { value: "", selected: true }, "choose a target")]),
      ...targets.map((t) => el("option", { value: t, selected: current && current.target_field === t }, t)),
      el("option", { value: "", "data-none": "true" }, "no counterpart"));
    const recText = rec ? `${rec.target_field}${rec.method === "matcher" ? "" : ` (${rec.method.replace("_", " ")})`}` : "—";
    return el("tr", { "data-source": source },
      el("th", { scope: "row", text: source }),
      el("td", { class: "proposed", text: current ? `${current.target_field}${current.method === "user" ? " (yours)" : ""}`
        : (mapping.no_counterpart || []).includes(source) ? "no counterpart" : "unmapped" }),
      el("td", { class: "recommendation", text: recText }),
      el("td", {}, el("div", { class: "decision" },
        el("button", { type: "button", class: "secondary", disabled: !current, "aria-label": `Accept ${source}`,
                       onclick: () => decide(source, current.target_field) }, "Accept"),
        select,
        el("button", { type: "button", "aria-label": `Correct ${source}`, onclick: () => decide(source, select.value, select.selectedOptions[0]?.dataset.none === "true") },
           "Correct"))));
  });
  $("mapping").querySelector("tbody").replaceChildren(...rows);
  $("mapping").hidden = false; $("mapping-empty").hidden = true;
}

// `none`: the user says the field has no counterpart (sent as target_field null, and learned).
async function decide(source, target, none = false) {
  const { flowId } = state.mapping;
  if (!target && !none) { $("mapping-status").textContent = `Choose a target for ${source} first`; return; }
  const lesson = none ? `${source} has no counterpart` : `${source} → ${target}`;
  $("mapping-status").textContent = `Teaching ${lesson}…`;
  try {
    await api("POST", `/v1/flows/${flowId}/corrections`, { source_field: source, target_field: none ? null : target });
    await loadMapping(flowId);
    $("mapping-status").textContent = `Learned: ${lesson}`;
  } catch (error) {
    $("mapping-status").textContent = `Not saved: ${error.message}`;
  }
}

// -- the agents' decisions: correct a risk level or a 6R strategy, as a mapping -------------------
const DECISIONS = [
  { phase: "risk_assessment", label: "risk level", field: "level", rows: (r) => r.applications,
    value: (row) => row.level, decision: "risk_level", values: ["low", "medium", "high", "critical"] },
  { phase: "migration_strategy", label: "6R strategy", field: "strategy", rows: (r) => r.strategies,
    value: (row) => row.strategy, decision: "strategy",
    values: ["retire", "retain", "repurchase", "rehost", "replatform", "refactor"] },
];

async function loadDecisions(flowId) {
  const flow = await api("GET", `/v1/flows/${flowId}`);
  if (flowId !== state.selected) return;
  $("decisions-flow").textContent = `· ${flow.name} ${flowId.slice(0, 8)}`;
  const rows = [];
  for (const kind of DECISIONS) {
    const result = flow.results && flow.results[kind.phase];
    if (!result) continue;
    const mine = new Set((result.corrections || []).filter((c) => c.decision === kind.decision).map((c) => c.item));
    const taught = new Set((result.learned || []).filter((l) => l.decision === kind.decision).map((l) => l.item));
    for (const row of kind.rows(result)) {
      const app = row.application;
      const now = kind.value(row);
      const select = el("select", { "aria-label": `Correct ${kind.label} of ${app}` },
        ...kind.values.map((v) => el("option", { value: v, selected: v === now }, v)));
      const note = mine.has(app) ? " (yours)" : taught.has(app) ? " (taught)" : "";
      rows.push(el("tr", { "data-item": app, "data-phase": kind.phase },
        el("th", { scope: "row", text: app }),
        el("td", { text: kind.label }),
        el("td", { class: "now", text: `${now}${note}` }),
        el("td", {}, el("div", { class: "decision" }, select,
          el("button", { type: "button", "aria-label": `Correct ${kind.label} of ${app}: save`,
                         onclick: () => correctDecision(flowId, kind, app, select.value) }, "Correct")))));
    }
  }
  $("decisions").querySelector("tbody").replaceChildren(...rows);
  $("decisions").hidden = rows.length === 0; $("decisions-empty").hidden = rows.length > 0;
}

async function correctDecision(flowId, kind, item, value) {
  $("decisions-status").textContent = `Teaching ${item}: ${kind.label} ${value}…`;
  try {
    await api("POST", `/v1/flows/${flowId}/corrections`, { phase: kind.phase, item, corrected: { [kind.field]: value } });
    await loadDecisions(flowId);
    $("decisions-status").textContent = `Learned: ${item} → ${kind.label} ${value}`;
  } catch (error) {
    $("decisions-status").textContent = `Not saved: ${error.message}`;
  }
}

// -- costs ----------------------------------------------------------------------------------------
let costSoon = null;
function refreshCostsSoon() { clearTimeout(costSoon); costSoon = setTimeout(refreshCosts, 700); }

async function refreshCosts() {
  const now = new Date();
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString();
  const summary = await api("GET", `/v1/costs/summary?start=${encodeURIComponent(start)}`).catch(() => null);
  if (!summary) return;
  $("spend-total").textContent = money(summary.total_cost);
  let budget = null;
  try { budget = await api("GET", "/v1/costs/budget"); } catch (error) { if (error.status !== 404) throw error; }
  const meter = $("budget-meter");
  if (budget) {
    meter.hidden = false; meter.max = budget.limit; meter.value = Math.min(budget.used, budget.limit);
    $("budget-text").textContent = `of ${money(budget.limit)} budget (${Math.round(100 * (budget.utilization || 0))} %)`;
  } else {
    meter.hidden = true; $("budget-text").textContent = "(no monthly budget set)";
  }
  barChart($("chart-model"), Object.entries(summary.by_model).map(([k, v]) => [k, v.cost]), "Spend by model");
  barChart($("chart-day"), Object.entries(summary.by_day).sort().map(([k, v]) => [k.slice(5), v.cost]), "Spend by day");
}

function barChart(container, entries, title) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 320, row = 22, height = Math.max(1, entries.length) * row + 4;
  const max = Math.max(...entries.map(([, v]) => v), 1e-9);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${entries.map(([k, v]) => `${k} ${money(v)}`).join(", ") || "no spend yet"}`);
  entries.forEach(([label, value], i) => {
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", 110); bar.setAttribute("y", i * row + 4); bar.setAttribute("height", row - 8);
    bar.setAttribute("width", Math.max(1, (value / max) * (width - 200))); bar.setAttribute("fill", "#0b5fff");
    const name = document.createElementNS(ns, "text");
    name.setAttribute("x", 0); name.setAttribute("y", i * row + 16); name.textContent = label.slice(0, 16);
    const amount = document.createElementNS(ns, "text");
    amount.setAttribute("x", width - 84); amount.setAttribute("y", i * row + 16); amount.textContent = money(value);
    svg.append(bar, name, amount);
  });
  container.replaceChildren(entries.length ? svg : el("p", { class: "muted", text: "No spend yet" }));
}

function addAlert(data) {
  const list = $("alerts");
  if (list.querySelector(".muted")) list.replaceChildren();
  list.prepend(el("li", { role: "alert", text: data.message || `Budget at ${Math.round(100 * (data.utilization || 0))} %` }));
}

const agentName = (name) => (name || "").replace(/:[0-9a-f]{32}$/, "");  // flow agents are addressed <agent>:<flow id>

function addMailbox(data) {
  const content = data.content && data.content.summary ? data.content.summary
    : (typeof data.content === "string" ? data.content : JSON.stringify(data.content));
  const list = $("mailbox");
  list.prepend(el("li", { text: `${agentName(data.sender)} → ${agentName(data.receiver)} (${data.type}): ${(content || "").slice(0, 140)}` }));
  while (list.children.length > 100) list.lastChild.remove();
}

// -- start ----------------------------------------------------------------------------------------
$("sign-in-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("token-input").value); });
$("sign-out").addEventListener("click", signOut);
$("start-flow").addEventListener("click", () => startFlow("discovery"));
$("start-optimisation").addEventListener("click", () => startFlow("optimization"));
if (state.token) signIn(state.token);
