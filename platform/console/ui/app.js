// The operators' console: a single page on the public API. The key lives in this tab's sessionStorage and goes
// out as a Bearer header; there are no cookies. Everything shown comes from the API's answers, rendered as text.

const KEY = "msgsvc.console.key";
const TENANT = "msgsvc.console.tenant"; // the tenant of a tenant key ("" for an admin key)
const REFRESH_MS = 3000;
const REASONS = ["undecodable", "retries_exhausted", "delivery_limit", "rejected", "expired", "maxlen"];

const $ = (sel) => document.querySelector(sel);

// h builds an element: h("td", {class: "num"}, "3"). Children are nodes or text (never parsed as HTML).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// Problem is an API error: an RFC 9457 problem's title and detail, or what went wrong on the way.
class Problem extends Error {
  constructor(status, title, detail, body) {
    super(`${title}${detail ? ": " + detail : ""}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.body = body;
  }
}

// api calls the API with the signed-in key and returns {status, body}; an error answer throws a Problem.
async function api(method, path, body, key = sessionStorage.getItem(KEY)) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store" });
  } catch (err) {
    throw new Problem(0, "The service did not answer", String(err.message || err));
  }
  const text = await resp.text();
  let parsed = null;
  if (text) {
    try { parsed = JSON.parse(text); } catch { parsed = text; }
  }
  if (!resp.ok) {
    if (parsed && typeof parsed === "object") {
      const fields = Array.isArray(parsed.errors) ? parsed.errors.map((e) => `${e.field}: ${e.detail}`) : [];
      const detail = [parsed.detail, ...fields].filter(Boolean).join("; ");
      throw new Problem(resp.status, parsed.title || `HTTP ${resp.status}`, detail, parsed);
    }
    throw new Problem(resp.status, `HTTP ${resp.status} ${resp.statusText}`, typeof parsed === "string" ? parsed.slice(0, 300) : "", parsed);
  }
  return { status: resp.status, body: parsed };
}

function showError(err) {
  const box = $("#error");
  if (!err) { box.hidden = true; box.replaceChildren(); return; }
  const p = err instanceof Problem ? err : new Problem(0, "Something went wrong", String(err && err.message || err));
  box.replaceChildren(h("strong", {}, p.title), p.detail ? h("span", { class: "detail" }, p.detail) : "");
  box.hidden = false;
}

// answer renders an API answer (or a Problem) for the operator to read.
function answer(result) {
  if (result instanceof Problem) {
    return h("div", { class: "answer err", role: "status" },
      h("span", { class: "status" }, result.status ? String(result.status) : "—"), " ",
      h("strong", {}, result.title), result.detail ? " — " + result.detail : "");
  }
  return h("div", { class: "answer ok", role: "status" },
    h("span", { class: "status" }, String(result.status)), " ",
    result.body !== null && result.body !== "" ? h("pre", { class: "json" }, JSON.stringify(result.body, null, 2)) : "");
}

const fmt = {
  num: (n) => (n === undefined || n === null ? "—" : Number(n).toLocaleString("en")),
  time: (s) => (s ? new Date(s).toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, "Z") : "—"),
  rate: (t) => (t.rate_limit === undefined || t.rate_limit === null ? "default" : t.rate_limit === 0 ? "unlimited" : `${fmt.num(t.rate_limit)}/s`),
};

// age says a number of seconds the way an operator reads it: "7 d", "36 h", "90 s"; 0 is "forever".
function age(sec) {
  if (sec === undefined || sec === null) return "—";
  if (sec === 0) return "forever";
  for (const [n, u] of [[86400, "d"], [3600, "h"], [60, "min"]]) if (sec % n === 0) return `${fmt.num(sec / n)} ${u}`;
  return `${fmt.num(sec)} s`;
}

// bytes says a size in binary units: "72 KiB".
function bytes(n) {
  if (n === undefined || n === null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

// retentionText says a stats answer's retention, and whether it is the service's default.
function retentionText(s) { return s.retention_default ? `${age(s.max_age_seconds)} (default)` : age(s.max_age_seconds); }

// limitText says a stats answer's rate limit, and whether it is the service's default.
function limitText(s) { return s.rate_limit_default ? `default (${fmt.rate(s)})` : fmt.rate(s); }

function isAdmin() { return !sessionStorage.getItem(TENANT); }

// ---- page lifecycle: one view at a time; its timers stop when another view starts ----

let timers = [];
function every(ms, fn) {
  let stopped = false;
  let id;
  const loop = async () => {
    if (stopped) return;
    try { await fn(); } catch (err) { showError(err); }
    if (!stopped) id = setTimeout(loop, ms);
  };
  id = setTimeout(loop, ms);
  timers.push(() => { stopped = true; clearTimeout(id); });
}
function stopTimers() { timers.forEach((stop) => stop()); timers = []; }

function header() {
  const nav = $("#nav");
  const who = $("#who");
  const key = sessionStorage.getItem(KEY);
  nav.replaceChildren();
  who.replaceChildren();
  if (!key) return;
  const route = location.hash || "#/tenants";
  if (isAdmin()) {
    nav.append(h("a", { href: "#/tenants", "aria-current": route === "#/tenants" ? "page" : null }, "Tenants"));
  } else {
    const t = sessionStorage.getItem(TENANT);
    nav.append(h("a", { href: `#/tenants/${t}`, "aria-current": "page" }, "My tenant"));
  }
  nav.append(h("a", { href: "/swagger/index.html" }, "API"));
  who.append(h("span", {}, isAdmin() ? "admin key" : "tenant key"),
    h("button", { type: "button", id: "signout", onclick: () => { sessionStorage.clear(); location.hash = "#/signin"; } }, "Sign out"));
}

async function route() {
  stopTimers();
  showError(null);
  const key = sessionStorage.getItem(KEY);
  const hash = location.hash || "";
  header();
  const main = $("#main");
  if (!key) { renderSignIn(main); return; }
  const m = hash.match(/^#\/tenants\/([0-9a-fA-F-]{36})$/);
  try {
    if (m) await renderTenant(main, m[1]);
    else if (isAdmin()) await renderTenants(main);
    else location.hash = `#/tenants/${sessionStorage.getItem(TENANT)}`;
  } catch (err) {
    if (err instanceof Problem && err.status === 401) { // the key was revoked, or its tenant deleted
      sessionStorage.clear();
      header();
      renderSignIn(main);
      showError(err);
      return;
    }
    main.replaceChildren(h("p", { class: "muted" }, "This page could not be loaded."));
    showError(err);
  }
}

// ---- sign-in ----

function renderSignIn(main) {
  const out = h("div", { id: "signin-answer" });
  const form = h("form", { id: "signin-form" },
    h("label", {}, "API key", h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true, placeholder: "an admin key, or a tenant's msk_… key" })),
    h("label", {}, "Tenant id (only with a tenant key)", h("input", { id: "tenant", name: "tenant", autocomplete: "off", placeholder: "0193a5b0-…" })),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    h("p", { class: "note" }, "The key stays in this tab (sessionStorage) and is sent as a Bearer header to this server only."),
    out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = form.key.value.trim();
    const tenant = form.tenant.value.trim();
    out.replaceChildren();
    try {
      // Tenant keys look like msk_<key id>_<secret>; admin keys come from the service's configuration. Only the
      // call that the key may make is tried, so that signing in causes no refused request.
      if (key.startsWith("msk_")) {
        if (!tenant) throw new Problem(0, "This is a tenant key", "Give the tenant's id too: a tenant key sees only its own tenant.");
        await api("GET", `/api/v1/tenants/${encodeURIComponent(tenant)}`, undefined, key);
        sessionStorage.setItem(TENANT, tenant);
      } else {
        await api("GET", "/api/v1/tenants?limit=1", undefined, key);
        sessionStorage.setItem(TENANT, "");
      }
      sessionStorage.setItem(KEY, key);
      const target = sessionStorage.getItem(TENANT) ? `#/tenants/${tenant}` : "#/tenants";
      if (location.hash === target) route(); else location.hash = target;
    } catch (err) {
      out.replaceChildren(answer(err));
    }
  });
  main.replaceChildren(h("section", { class: "panel signin" },
    h("div", { class: "panel-head" }, h("h1", {}, "Sign in")),
    h("div", { class: "panel-body" }, form)));
  form.key.focus();
}

// ---- dialogs ----

// ask shows a modal form and resolves with its FormData, or null when cancelled (Escape works too).
function ask(title, fields, submitLabel, danger = false) {
  const dialog = $("#dialog");
  return new Promise((resolve) => {
    const form = h("form", { method: "dialog" },
      h("h2", {}, title), ...fields,
      h("div", { class: "buttons" },
        h("button", { type: "button", value: "cancel", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "submit", value: "ok", class: danger ? "danger solid" : "primary" }, submitLabel)));
    dialog.replaceChildren(form);
    dialog.returnValue = "";
    dialog.onclose = () => resolve(dialog.returnValue === "ok" ? new FormData(form) : null);
    dialog.showModal();
    const first = form.querySelector("input, select");
    (first || form.querySelector("button[type=submit]")).focus();
  });
}

async function resize(t, onDone) {
  const data = await ask(`Workers of ${t.name}`, [
    h("label", {}, "Workers", h("input", { name: "workers", type: "number", min: 1, max: 1000, required: true, value: t.workers })),
  ], "Resize");
  if (!data) return;
  onDone(await attempt(() => api("PUT", `/api/v1/tenants/${t.id}/config/concurrency`, { workers: Number(data.get("workers")) })));
}

async function setRateLimit(t, onDone) {
  const data = await ask(`Rate limit of ${t.name}`, [
    h("label", {}, "Messages per second (0 = unlimited, empty = the default)",
      h("input", { name: "rate", type: "number", min: 0, step: "any", value: t.rate_limit ?? "" })),
  ], "Set");
  if (!data) return;
  const v = String(data.get("rate")).trim();
  onDone(await attempt(() => api("PUT", `/api/v1/tenants/${t.id}/config/rate-limit`, { messages_per_second: v === "" ? null : Number(v) })));
}

const UNITS = [["seconds", 1], ["minutes", 60], ["hours", 3600], ["days", 86400]];

async function setRetention(t, onDone) {
  const cur = t.max_age_seconds; // null or undefined: the default
  const [unit, mult] = cur ? [...UNITS].reverse().find(([, m]) => cur % m === 0) : ["days", 86400];
  const data = await ask(`Retention of ${t.name}`, [
    h("p", { class: "note" }, "Messages older than this are never served and are deleted in the background. Dead letters keep their own retention."),
    h("div", { class: "row" },
      h("label", { class: "grow" }, "Keep messages for (0 = keep forever)",
        h("input", { name: "amount", type: "number", step: 1, value: cur === undefined || cur === null ? "" : cur / mult,
          oninput: (ev) => { ev.target.form.elements.default.checked = ev.target.value === ""; } })),
      h("label", {}, "Unit", h("select", { name: "unit" }, ...UNITS.map(([u]) => h("option", { value: u, selected: u === unit }, u))))),
    h("label", { class: "check" }, h("input", { name: "default", type: "checkbox", checked: cur === undefined || cur === null }), "Use the service's default (RETENTION_DEFAULT)"),
  ], "Set");
  if (!data) return;
  let body;
  if (data.get("default")) body = { max_age_seconds: null };
  else {
    const v = String(data.get("amount")).trim();
    const m = UNITS.find(([u]) => u === data.get("unit"))[1];
    body = { max_age_seconds: v === "" ? null : Number(v) * m };
  }
  onDone(await attempt(() => api("PUT", `/api/v1/tenants/${t.id}/config/retention`, body)));
}

async function remove(t, onDone) {
  const data = await ask(`Delete ${t.name}?`, [
    h("p", {}, "This deletes the tenant, its stored messages, its dead letters and its queues. It cannot be undone."),
    h("p", { class: "mono" }, t.id),
  ], "Delete tenant", true);
  if (!data) return;
  onDone(await attempt(() => api("DELETE", `/api/v1/tenants/${t.id}`)));
}

// attempt runs an API call and returns its answer or its Problem, for answer() to show.
async function attempt(call) {
  try { return await call(); } catch (err) { return err instanceof Problem ? err : new Problem(0, "Something went wrong", String(err)); }
}

// ---- tenants ----

async function renderTenants(main) {
  const cursors = [""]; // cursors[i] loads page i
  let pageNo = 0;
  const PAGE = 20;
  const out = h("div", { id: "tenants-answer" });
  const tbody = h("tbody", { id: "tenants-body" });
  const pageInfo = h("span", { class: "muted" });
  const prev = h("button", { type: "button", id: "tenants-prev", onclick: () => { pageNo--; load(); } }, "← Newer");
  const next = h("button", { type: "button", id: "tenants-next", onclick: () => { pageNo++; load(); } }, "Older →");
  const updated = h("span", { class: "muted", id: "tenants-updated" });

  const create = h("form", { class: "inline", id: "create-form" },
    h("label", {}, "Name", h("input", { name: "name", required: true, maxlength: 200, placeholder: "Acme Corp" })),
    h("label", {}, "Workers", h("input", { name: "workers", type: "number", min: 1, max: 1000, value: 3 })),
    h("button", { class: "primary", type: "submit" }, "Create tenant"));
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await attempt(() => api("POST", "/api/v1/tenants", { name: create.name.value.trim(), concurrency_config: Number(create.workers.value) }));
    if (r instanceof Problem) { out.replaceChildren(answer(r)); return; }
    create.reset();
    out.replaceChildren(h("div", { class: "answer ok", role: "status" },
      h("span", { class: "status" }, String(r.status)), " Created ", h("a", { href: `#/tenants/${r.body.id}` }, r.body.name),
      h("p", { class: "note" }, "Its first API key, shown this once (with the tenant id, it signs in here as the tenant):"),
      h("div", { class: "secret", id: "created-key" }, r.body.api_key),
      h("p", { class: "mono", id: "created-id" }, r.body.id)));
    pageNo = 0;
    load();
  });

  const done = (r) => { out.replaceChildren(answer(r)); load(); };

  async function row(t) {
    const [one, stats] = await Promise.all([
      attempt(() => api("GET", `/api/v1/tenants/${t.id}`)),
      attempt(() => api("GET", `/api/v1/tenants/${t.id}/stats`)),
    ]);
    const s = stats instanceof Problem ? {} : stats.body;
    const c = one instanceof Problem ? null : one.body.consumer;
    const view = { ...t, workers: t.concurrency_config, max_age_seconds: one instanceof Problem ? t.max_age_seconds : one.body.max_age_seconds };
    const dead = s.dead_letters;
    return h("tr", { "data-tenant-id": t.id },
      h("td", {}, h("a", { href: `#/tenants/${t.id}` }, t.name)),
      h("td", { class: "num", "data-col": "workers" }, fmt.num(t.concurrency_config)),
      h("td", { class: "num", "data-col": "rate" }, s.rate_limit === undefined ? fmt.rate(t) : [fmt.rate(s), s.rate_limit_default ? h("div", { class: "muted small" }, "default") : ""]),
      h("td", { class: "num hide-narrow", "data-col": "retention" }, s.max_age_seconds === undefined ? "—" : [age(s.max_age_seconds), s.retention_default ? h("div", { class: "muted small" }, "default") : ""]),
      h("td", { class: "num", "data-col": "depth" }, s.queue_messages < 0 ? "?" : fmt.num(s.queue_messages)),
      h("td", { class: "num", "data-col": "consumers" }, fmt.num(s.queue_consumers)),
      h("td", { class: "num", "data-col": "stored" }, fmt.num(s.stored_last_minute)),
      h("td", { class: "num", "data-col": "dead" }, dead ? h("span", { class: "pill bad" }, fmt.num(dead)) : fmt.num(dead)),
      h("td", { class: "hide-narrow", "data-col": "replica" }, c ? h("span", { class: c.running ? "pill good" : c.error ? "pill bad" : "pill", title: c.error || "" }, c.replica || "none") : "—"),
      h("td", { class: "actions" }, h("div", { class: "btns" },
        h("button", { type: "button", class: "small", "data-action": "resize", onclick: () => resize(view, done) }, "Workers"),
        h("button", { type: "button", class: "small", "data-action": "rate", onclick: () => setRateLimit(view, done) }, "Rate"),
        h("button", { type: "button", class: "small", "data-action": "retention", onclick: () => setRetention(view, done) }, "Retention"),
        h("button", { type: "button", class: "small danger", "data-action": "delete", onclick: () => remove(view, done) }, "Delete"))));
  }

  async function load() {
    const cursor = cursors[pageNo] || "";
    const q = new URLSearchParams({ limit: PAGE });
    if (cursor) q.set("cursor", cursor);
    const { body } = await api("GET", `/api/v1/tenants?${q}`);
    cursors[pageNo + 1] = body.has_more ? body.next_cursor : undefined;
    const rows = await Promise.all((body.data || []).map(row));
    if ($("#dialog").open) return; // do not move the table under an open dialog
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "empty" }, pageNo ? "No more tenants." : "No tenants yet: create one above.")));
    prev.disabled = pageNo === 0;
    next.disabled = !body.has_more;
    pageInfo.textContent = `Page ${pageNo + 1}`;
    updated.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    showError(null);
  }

  main.replaceChildren(
    h("h1", {}, "Tenants"),
    h("p", { class: "sub" }, "Queue depth and consumers from RabbitMQ, stored messages from PostgreSQL; refreshed every few seconds."),
    h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "New tenant")), h("div", { class: "panel-body" }, create, out)),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { class: "grow" }, "All tenants"), updated),
      h("div", { class: "scroll" }, h("table", { id: "tenants" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Name"), h("th", { class: "num" }, "Workers"), h("th", { class: "num" }, "Rate limit"), h("th", { class: "num hide-narrow" }, "Retention"),
          h("th", { class: "num" }, "Queue depth"), h("th", { class: "num" }, "Consumers"), h("th", { class: "num" }, "Stored /min"),
          h("th", { class: "num" }, "Dead letters"), h("th", { class: "hide-narrow" }, "Owner replica"), h("th", {}, h("span", { class: "muted" }, "")))),
        tbody)),
      h("div", { class: "pager" }, prev, next, h("span", { class: "grow" }), pageInfo)));
  await load();
  every(REFRESH_MS, load);
}

// ---- one tenant ----

async function renderTenant(main, id) {
  const admin = isAdmin();
  const { body: tenant } = await api("GET", `/api/v1/tenants/${id}`);
  const statsBox = h("div", { class: "stats", id: "stats" });
  const configOut = h("div", { id: "config-answer" });

  async function loadStats() {
    const [{ body: s }, { body: t }] = await Promise.all([api("GET", `/api/v1/tenants/${id}/stats`), api("GET", `/api/v1/tenants/${id}`)]);
    const c = t.consumer || {};
    const stat = (k, v, key, small) => h("div", { class: "stat", "data-stat": key }, h("div", { class: "k" }, k), h("div", { class: small ? "v small" : "v" }, v));
    statsBox.replaceChildren(
      stat("Stored", (s.stored_messages_estimated ? "≈ " : "") + fmt.num(s.stored_messages), "stored"),
      stat("Stored last min", (s.stored_last_minute_estimated ? "≈ " : "") + fmt.num(s.stored_last_minute), "stored_last_minute"),
      stat("Publish rate", `${fmt.num(Math.round((s.publish_rate_per_second || 0) * 10) / 10)}/s`, "rate_now"),
      stat("Queue depth", s.queue_messages < 0 ? "?" : fmt.num(s.queue_messages), "queue"),
      stat("Consumers", fmt.num(s.queue_consumers), "consumers"),
      stat("Dead letters", fmt.num(s.dead_letters), "dead_letters"),
      stat("Workers", fmt.num(s.workers), "workers"),
      stat("Rate limit", limitText(s), "rate_limit", true),
      stat("Owner replica", c.replica || "none", "replica", true),
      stat("Newest message", fmt.time(s.newest_message_at), "newest", true),
      stat("Retention", retentionText(s), "retention", true),
      stat("Storage", bytes(s.storage_bytes), "storage", true),
      stat("Oldest message", fmt.time(s.oldest_message_at), "oldest", true));
    view.workers = s.workers;
    view.rate_limit = s.rate_limit_default ? null : s.rate_limit;
    view.max_age_seconds = s.retention_default ? null : s.max_age_seconds;
  }
  const view = { id, name: tenant.name, workers: tenant.concurrency_config, rate_limit: tenant.rate_limit, max_age_seconds: tenant.max_age_seconds };
  const configDone = (r) => {
    configOut.replaceChildren(answer(r));
    if (!(r instanceof Problem) && r.status === 204) { location.hash = "#/tenants"; return; }
    loadStats().catch(showError);
  };

  // Messages, newest first, paged with the API's cursor; the first page follows new messages.
  const msgCursors = [""];
  let msgPage = 0;
  const msgBody = h("tbody", { id: "messages-body" });
  const msgPrev = h("button", { type: "button", id: "messages-prev", onclick: () => { msgPage--; loadMessages(); } }, "← Newer");
  const msgNext = h("button", { type: "button", id: "messages-next", onclick: () => { msgPage++; loadMessages(); } }, "Older →");
  const msgInfo = h("span", { class: "muted" });
  async function loadMessages() {
    const q = new URLSearchParams({ tenant_id: id, limit: 10 });
    if (msgCursors[msgPage]) q.set("cursor", msgCursors[msgPage]);
    const { body } = await api("GET", `/api/v1/messages?${q}`);
    msgCursors[msgPage + 1] = body.has_more ? body.next_cursor : undefined;
    const rows = (body.data || []).map((m) => h("tr", { "data-message-id": m.id },
      h("td", { class: "mono" }, m.id), h("td", { class: "hide-narrow" }, fmt.time(m.created_at)),
      h("td", { class: "wrap" }, h("pre", { class: "json" }, JSON.stringify(m.payload, null, 2)))));
    msgBody.replaceChildren(...rows);
    if (!rows.length) msgBody.append(h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No stored messages on this page.")));
    msgPrev.disabled = msgPage === 0;
    msgNext.disabled = !body.has_more;
    msgInfo.textContent = `Page ${msgPage + 1}`;
  }

  const findOut = h("div", { id: "find-answer" });
  const find = h("form", { class: "inline", id: "find-form" },
    h("label", {}, "Message id", h("input", { name: "mid", required: true, size: 38, autocomplete: "off", placeholder: "the id a publish answered" })),
    h("button", { type: "submit" }, "Find"));
  find.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const mid = find.mid.value.trim();
    findOut.replaceChildren(answer(await attempt(() => api("GET", `/api/v1/messages/${encodeURIComponent(mid)}?tenant_id=${id}`))));
  });

  // Dead letters (an admin's): filtered by reason, replay one, replay all, discard one.
  const dlBody = h("tbody", { id: "dead-body" });
  const dlOut = h("div", { id: "dead-answer" });
  const dlCursors = [""];
  let dlPage = 0;
  const reason = h("select", { id: "reason", "aria-label": "Reason", onchange: () => { dlPage = 0; dlCursors.length = 1; loadDead().catch(showError); } },
    h("option", { value: "" }, "every reason"), ...REASONS.map((r) => h("option", { value: r }, r)));
  const dlPrev = h("button", { type: "button", id: "dead-prev", onclick: () => { dlPage--; loadDead().catch(showError); } }, "← Newer");
  const dlNext = h("button", { type: "button", id: "dead-next", onclick: () => { dlPage++; loadDead().catch(showError); } }, "Older →");
  const deadDone = (r) => { dlOut.replaceChildren(answer(r)); loadDead().catch(showError); loadStats().catch(showError); };
  async function loadDead() {
    const q = new URLSearchParams({ limit: 10 });
    if (reason.value) q.set("reason", reason.value);
    if (dlCursors[dlPage]) q.set("cursor", dlCursors[dlPage]);
    const { body } = await api("GET", `/api/v1/tenants/${id}/dead-letters?${q}`);
    dlCursors[dlPage + 1] = body.has_more ? body.next_cursor : undefined;
    const rows = (body.data || []).map((d) => h("tr", { "data-dead-id": d.id },
      h("td", {}, h("div", { class: "mono" }, d.id), h("div", { class: "muted" }, fmt.time(d.dead_lettered_at))),
      h("td", {}, h("span", { class: "pill warn" }, d.reason), h("div", { class: "muted" }, `${fmt.num(d.attempts)} attempt${d.attempts === 1 ? "" : "s"}`)),
      h("td", { class: "wrap" }, d.last_error || h("span", { class: "muted" }, "—")),
      h("td", { class: "wrap" }, h("pre", { class: "json" }, d.payload !== undefined && d.payload !== null ? JSON.stringify(d.payload, null, 2) : d.raw_payload ?? "")),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "small", "data-action": "replay", onclick: async () => deadDone(await attempt(() => api("POST", `/api/v1/tenants/${id}/dead-letters/${d.id}/replay`))) }, "Replay"), " ",
        h("button", { type: "button", class: "small danger", "data-action": "discard", onclick: async () => deadDone(await attempt(() => api("DELETE", `/api/v1/tenants/${id}/dead-letters/${d.id}`))) }, "Discard"))));
    dlBody.replaceChildren(...rows);
    if (!rows.length) dlBody.append(h("tr", {}, h("td", { colspan: 5, class: "empty" }, reason.value ? `No dead letters with reason ${reason.value}.` : "No dead letters.")));
    dlPrev.disabled = dlPage === 0;
    dlNext.disabled = !body.has_more;
  }
  const replayAll = h("button", { type: "button", id: "replay-all", onclick: async () => {
    const ok = await ask(`Replay every dead letter of ${tenant.name}?`, [h("p", {}, "Each is published to the tenant's queue again and leaves the dead letters once it is sent.")], "Replay all");
    if (ok) deadDone(await attempt(() => api("POST", `/api/v1/tenants/${id}/dead-letters/replay`)));
  } }, "Replay all");

  main.replaceChildren(
    h("div", { class: "crumbs" }, admin ? h("a", { href: "#/tenants" }, "← Tenants") : ""),
    h("h1", { id: "tenant-name" }, tenant.name),
    h("p", { class: "sub mono" }, id),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { class: "grow" }, "Now"),
        admin ? [
          h("button", { type: "button", id: "tenant-resize", onclick: () => resize(view, configDone) }, "Workers"),
          h("button", { type: "button", id: "tenant-rate", onclick: () => setRateLimit(view, configDone) }, "Rate limit"),
          h("button", { type: "button", id: "tenant-retention", onclick: () => setRetention(view, configDone) }, "Retention"),
          h("button", { type: "button", id: "tenant-delete", class: "danger", onclick: () => remove(view, configDone) }, "Delete"),
        ] : ""),
      statsBox, h("div", { class: "panel-body" }, configOut)),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { class: "grow" }, "Newest messages"), find),
      h("div", { class: "panel-body" }, findOut),
      h("div", { class: "scroll" }, h("table", { id: "messages", class: "stack" },
        h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", { class: "hide-narrow" }, "Published"), h("th", {}, "Payload"))), msgBody)),
      h("div", { class: "pager" }, msgPrev, msgNext, h("span", { class: "grow" }), msgInfo)),
    admin ? h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { class: "grow" }, "Dead letters"), reason, replayAll),
      h("div", { class: "panel-body" }, dlOut),
      h("div", { class: "scroll" }, h("table", { id: "dead", class: "stack" },
        h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Reason"), h("th", {}, "Last error"), h("th", {}, "Payload"), h("th", {}, ""))), dlBody)),
      h("div", { class: "pager" }, dlPrev, dlNext))
      : h("p", { class: "note" }, "Dead letters are an admin's: sign in with an admin key to see and replay them."));

  await Promise.all([loadStats(), loadMessages(), admin ? loadDead() : null]);
  every(REFRESH_MS, async () => {
    await loadStats();
    if (msgPage === 0) await loadMessages();
    if (admin && dlPage === 0) await loadDead();
  });
}

window.addEventListener("hashchange", route);
route();
