/*
 * celery-tracking dashboard: live task table fed by the WebSocket feed (TrackerClient from
 * /static/tracker-client.js), task detail with streaming logs, notification bell, control
 * buttons and Plotly charts from the REST API. No build step, no dependencies beyond the two
 * scripts the gateway serves.
 */
(function () {
  "use strict";

  const API = "/api/v1/progress";
  const TOKEN_KEY = "celery-tracking.token";
  const MAX_ROWS = 500;
  // Statuses and what each event leaves a task in come from the server (tracker.vocabulary), not a copy.
  let TERMINAL = new Set();
  let STATUS_OF_EVENT = {};
  const vocabularyReady = fetch(API + "/vocabulary").then(async (resp) => {
    if (!resp.ok) throw new Error("the gateway did not answer " + API + "/vocabulary (" + resp.status + ")");
    const vocabulary = await resp.json();
    TERMINAL = new Set(vocabulary.terminal);
    STATUS_OF_EVENT = vocabulary.event_status;
  });
  const PLOT_CONFIG = {displayModeBar: false, responsive: true};

  const state = {
    token: null, user: null, client: null, everOpen: false,
    tasks: new Map(), rows: new Map(), selected: null, logCount: 0,
    notifications: [], unread: 0, chartsLoaded: false, chartTimer: null, snapshots: 0, bellTimer: null, bellSeq: 0,
  };

  // -- small helpers -----------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }

  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "-";
    const s = Math.max(0, seconds);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function toDate(v) {
    if (v == null || v === "") return null;
    const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
    return isNaN(d) ? null : d;
  }

  function clock(v) {
    const d = toDate(v);
    if (!d) return "-";
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function decodeToken(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(decodeURIComponent(escape(atob(part + "===".slice((part.length + 3) % 4)))));
      if (typeof claims.sub !== "string") return null;
      return {id: claims.sub, admin: claims.admin === true, exp: claims.exp};
    } catch (err) {
      return null;
    }
  }

  let toastTimer = null;
  function toast(message, bad) {
    const t = $("toast");
    t.textContent = message;
    t.classList.toggle("bad", !!bad);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 3500);
  }

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body, token) {
    const headers = {"Authorization": "Bearer " + (token || state.token)};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(API + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
    if (resp.status === 204) return null;
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) {
      const e = (data && data.error) || {};
      if (resp.status === 401 && !token) signOut("Your session has expired: sign in again.");
      throw new ApiError(resp.status, e.code || "error", e.message || resp.statusText);
    }
    return data;
  }

  // -- sign in / out ---------------------------------------------------------------------------------------
  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }

  async function signIn(token) {
    await vocabularyReady;
    const who = decodeToken(token);
    if (!who) throw new Error("That is not a token: paste the output of `tracker token USER`.");
    try {
      await api("GET", "/tasks?limit=1", undefined, token);
    } catch (err) {
      throw new Error(err.status === 401 ? "The gateway refused this token (" + err.message + ")." : err.message);
    }
    localStorage.setItem(TOKEN_KEY, token);
    start(token, who);
  }

  function signOut(message) {
    localStorage.removeItem(TOKEN_KEY);
    if (state.client) state.client.close();
    state.client = null;
    state.token = null;
    clearInterval(state.chartTimer);
    showLogin(message);
  }

  // -- start ------------------------------------------------------------------------------------------------
  function start(token, who) {
    state.token = token;
    state.user = who;
    state.everOpen = false;
    $("login").hidden = true;
    $("app").hidden = false;
    $("whoami").textContent = who.id + (who.admin ? " (admin)" : "");
    // The client authenticates with its first frame (no token in the URL) and asks this provider
    // again before the token's exp; a pasted token is not renewed, so at exp the feed closes (4001).
    state.client = new TrackerClient(null, () => state.token, {
      onStatus: onStatus, onEvent: onEvent, onSnapshot: onSnapshot,
      onError: (f) => { if (f.code !== "not_found") toast(f.message || f.code, true); },
      onAuthFailed: () => {
        const who = decodeToken(state.token || "");
        if (!who || (typeof who.exp === "number" && who.exp * 1000 <= Date.now())) {
          signOut("Your session has expired: sign in again.");
        }
      },
    });
    state.client.subscribe(who.admin ? "all" : "user:" + who.id);
    loadNotifications();
    if (!$("view-charts").hidden) loadCharts();
  }

  // -- live feed ----------------------------------------------------------------------------------------------
  function onStatus(status, info) {
    const pill = $("conn");
    if (status === "open") {
      state.everOpen = true;
      $("banner").hidden = true;
      pill.textContent = "live";
      pill.className = "pill pill-live";
      // Missed events were replayed by the feed; refresh what the page derives from REST.
      loadNotifications();
      if (state.selected) refreshDetail(state.selected);
      return;
    }
    if (status === "closed") return;
    pill.textContent = state.everOpen ? "offline" : "connecting";
    pill.className = "pill " + (state.everOpen ? "pill-down" : "pill-wait");
    if (state.everOpen && status === "reconnecting") {
      const wait = info && info.delay ? " in " + Math.ceil(info.delay / 1000) + "s" : "";
      $("banner-text").textContent = "Disconnected from the live feed - reconnecting" + wait + "...";
      $("banner").hidden = false;
    }
  }

  function onSnapshot(frame) {
    state.snapshots += 1;
    for (const t of frame.tasks || []) upsert(t.task_id, t, false);
    render();
  }

  function onEvent(frame) {
    if (frame.event === "notification") return onNotification(frame);
    const id = frame.task_id;
    if (!id) return;
    const d = frame.data || {};
    const patch = {user_id: frame.user_id, updated_at: frame.ts};
    if (frame.event === "task.progress") {
      Object.assign(patch, pick(d, ["progress", "current_step", "step_index", "total_steps", "eta_seconds"]));
      if (d.eta_seconds != null) patch.eta_at = Date.now() / 1000 + d.eta_seconds;
      if (patch.progress != null && (state.tasks.get(id) || {}).status === "pending") patch.status = "running";
    } else if (STATUS_OF_EVENT[frame.event]) {
      Object.assign(patch, pick(d, ["name", "task_type", "tags", "progress", "current_step", "eta_seconds", "worker",
                                    "error_type", "error_message", "started_at", "finished_at", "published_at"]));
      patch.status = STATUS_OF_EVENT[frame.event];
      if (patch.status === "completed") patch.progress = 100;
      if (d.eta_seconds != null) patch.eta_at = Date.now() / 1000 + d.eta_seconds;
    } else if (frame.event === "task.stalled") {
      patch.stalled = true;
    } else if (frame.event === "task.log") {
      if (state.selected === id) appendLog({ts: frame.ts, level: d.level, message: d.message}, true);
      return;
    } else {
      return;
    }
    const isNew = !state.tasks.has(id);
    if (isNew && !patch.published_at) patch.published_at = frame.ts;
    upsert(id, patch, true);
    if (state.selected === id) {
      renderDetailState(state.tasks.get(id));
      if (frame.event === "task.progress") extendChart(frame.ts, d.progress);
    }
    if (isNew) render(); else renderRow(id);
  }

  function pick(obj, keys) {
    const out = {};
    for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
    return out;
  }

  function upsert(id, patch, live) {
    const prev = state.tasks.get(id);
    let next = Object.assign({task_id: id}, prev || {}, patch);
    if (prev && !live) {
      // A stored record (snapshot or REST read) can trail the live events: the feed publishes
      // before the batched writer commits. Never let it roll newer live state back.
      const stored = toDate(patch.updated_at), seen = toDate(prev.updated_at);
      if (stored && seen && stored < seen) next = Object.assign({task_id: id}, patch, prev);
      if (TERMINAL.has(prev.status) && patch.status && !TERMINAL.has(patch.status)) next.status = prev.status;
    }
    if (!next.eta_at && next.eta_seconds != null && !TERMINAL.has(next.status)) {
      next.eta_at = Date.now() / 1000 + next.eta_seconds;
    }
    next._sort = sortKey(next);
    state.tasks.set(id, next);
    if (state.tasks.size > MAX_ROWS) evict();
  }

  function sortKey(t) {
    const d = toDate(t.created_at) || toDate(t.published_at) || toDate(t.started_at) || toDate(t.updated_at);
    return d ? d.getTime() : Date.now();
  }

  function evict() {
    const finished = [...state.tasks.values()].filter((t) => TERMINAL.has(t.status) && t.task_id !== state.selected)
      .sort((a, b) => a._sort - b._sort);
    while (state.tasks.size > MAX_ROWS && finished.length) state.tasks.delete(finished.shift().task_id);
  }

  // -- task table ---------------------------------------------------------------------------------------------
  function visible(t) {
    const status = $("status-filter").value;
    if (status === "active" && TERMINAL.has(t.status)) return false;
    if (status && status !== "active" && t.status !== status) return false;
    const q = $("search").value.trim().toLowerCase();
    if (!q) return true;
    return [t.task_id, t.name, t.task_type, t.current_step, t.user_id].some((v) => v && String(v).toLowerCase().includes(q));
  }

  function render() {
    const body = $("task-rows");
    const ordered = [...state.tasks.values()].sort((a, b) => b._sort - a._sort || (a.task_id < b.task_id ? 1 : -1));
    const shown = ordered.filter(visible);
    const keep = new Set(shown.map((t) => t.task_id));
    for (const [id, row] of state.rows) {
      if (!keep.has(id)) { row.remove(); state.rows.delete(id); }
    }
    let previous = null;
    for (const t of shown) {
      let row = state.rows.get(t.task_id);
      if (!row) {
        row = buildRow(t.task_id);
        state.rows.set(t.task_id, row);
      }
      const want = previous ? previous.nextSibling : body.firstChild;
      if (want !== row) body.insertBefore(row, want);
      fillRow(row, t);
      previous = row;
    }
    $("empty").hidden = shown.length > 0;
    const active = ordered.filter((t) => !TERMINAL.has(t.status)).length;
    $("counts").textContent = ordered.length ? `${shown.length} shown - ${active} active of ${ordered.length}` : "";
  }

  function renderRow(id) {
    const t = state.tasks.get(id);
    const row = state.rows.get(id);
    if (!t) return;
    if (!row || !visible(t)) { render(); return; }
    fillRow(row, t);
  }

  function buildRow(id) {
    const cells = {};
    const mk = (name, cls) => (cells[name] = el("td", {class: cls}));
    const row = el("tr", {"data-task-id": id, onclick: (e) => { if (!e.target.closest("button")) select(id); }},
      mk("task"), mk("user", "muted"), mk("status"), mk("progress"), mk("step", "muted"), mk("eta", "eta"),
      mk("started", "muted"), mk("actions"));
    cells.progress.append(el("div", {class: "progress-cell"},
      el("div", {class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100"},
        el("div", {class: "bar-fill"})),
      el("span", {class: "progress-text"})));
    cells.actions.append(el("div", {class: "actions"}));
    row._cells = cells;
    row.classList.add("flash");
    return row;
  }

  function fillRow(row, t) {
    const c = row._cells;
    const label = t.name || t.task_type || "task";
    if (c.task.dataset.label !== label) {
      c.task.replaceChildren(el("span", {class: "task-name", text: label}), el("span", {class: "task-id", text: t.task_id}));
      c.task.dataset.label = label;
    }
    c.user.textContent = t.user_id || "-";
    setStatus(c.status, t);
    setBar(c.progress, t);
    c.step.textContent = stepText(t);
    c.eta.textContent = etaText(t);
    c.started.textContent = clock(t.started_at || t.published_at);
    setActions(c.actions.firstChild, t, true);
    row.classList.toggle("selected", state.selected === t.task_id);
    row.dataset.status = t.status || "";
  }

  function setStatus(cell, t) {
    const status = t.status || "pending";
    const badge = el("span", {class: "status s-" + status, text: status, "data-status": status});
    const parts = [badge];
    if (t.stalled && !TERMINAL.has(status)) parts.push(el("span", {class: "stalled", text: "stalled"}));
    cell.replaceChildren(...parts);
  }

  function setBar(cell, t) {
    const pct = Math.max(0, Math.min(100, Number(t.progress) || 0));
    const bar = cell.querySelector(".bar");
    const fill = cell.querySelector(".bar-fill");
    fill.style.width = pct + "%";
    fill.className = "bar-fill f-" + (t.status || "pending");
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    cell.querySelector(".progress-text").textContent = (pct >= 100 || pct === 0 ? pct.toFixed(0) : pct.toFixed(1)) + "%";
  }

  function stepText(t) {
    const step = t.current_step || "";
    if (t.step_index != null && t.total_steps) return `${step} (${t.step_index}/${t.total_steps})`.trim();
    return step || "-";
  }

  function etaText(t) {
    if (TERMINAL.has(t.status)) {
      const d0 = toDate(t.started_at), d1 = toDate(t.finished_at);
      return d0 && d1 ? "took " + duration((d1 - d0) / 1000) : "-";
    }
    if (t.status === "paused") return "paused";
    if (t.eta_at == null) return "-";
    return duration(t.eta_at - Date.now() / 1000);
  }

  function setActions(box, t, compact) {
    const want = [];
    if (t.status === "running") want.push("pause", "cancel");
    else if (t.status === "paused") want.push("resume", "cancel");
    else if (t.status === "pending") want.push("cancel");
    const key = want.join(",");
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    box.replaceChildren(...want.map((action) => el("button", {
      class: action === "cancel" ? "danger" : "", "data-action": action, text: compact ? action : action[0].toUpperCase() + action.slice(1),
      onclick: (e) => { e.stopPropagation(); control(t.task_id, action, e.currentTarget); },
    })));
  }

  async function control(id, action, button) {
    const t = state.tasks.get(id) || {};
    if (action === "cancel" && !window.confirm(`Cancel ${t.name || id}?`)) return;
    if (button) button.disabled = true;
    try {
      const res = await api("POST", `/tasks/${encodeURIComponent(id)}/${action}`, action === "cancel" ? {} : undefined);
      // The reply's task is a stored row (read after the request), not a live event: the feed's
      // task.cancelled can arrive first, and a "running" row must not roll it back.
      if (res && res.task) upsert(id, res.task, false);
      renderRow(id);
      if (state.selected === id) renderDetailState(state.tasks.get(id));
      toast(`${action[0].toUpperCase() + action.slice(1)} requested for ${t.name || id}`);
    } catch (err) {
      toast(`${action} failed: ${err.message}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  }

  // -- task detail ----------------------------------------------------------------------------------------
  async function select(id) {
    state.selected = id;
    state.logCount = 0;
    for (const [rid, row] of state.rows) row.classList.toggle("selected", rid === id);
    $("detail").hidden = false;
    document.querySelector(".layout").classList.add("with-detail");
    $("detail-logs").replaceChildren();
    $("detail-chart").replaceChildren();
    renderDetailState(state.tasks.get(id) || {task_id: id});
    await refreshDetail(id);
  }

  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    document.querySelector(".layout").classList.remove("with-detail");
    for (const row of state.rows.values()) row.classList.remove("selected");
  }

  async function refreshDetail(id) {
    try {
      const [task, logs, fig] = await Promise.all([
        api("GET", `/tasks/${encodeURIComponent(id)}`),
        api("GET", `/tasks/${encodeURIComponent(id)}/logs?order=desc&limit=200`),
        api("GET", `/visualizations/progress-chart?task_id=${encodeURIComponent(id)}`),
      ]);
      if (state.selected !== id) return;
      upsert(id, task, false);
      renderRow(id);
      renderDetailState(state.tasks.get(id));
      $("detail-logs").replaceChildren(el("div", {class: "log-empty", text: "No log lines yet."}));
      state.logCount = 0;
      for (const ln of logs.items.slice().reverse()) appendLog(ln, false);
      $("log-live").hidden = false;
      if (window.Plotly) {
        fig.layout.title = undefined;
        fig.layout.margin = {l: 36, r: 8, t: 8, b: 40};
        fig.layout.height = 200;
        Plotly.react("detail-chart", fig.data, fig.layout, PLOT_CONFIG);
      }
    } catch (err) {
      if (err.status === 404) toast("That task no longer exists", true);
      else toast("Could not load the task: " + err.message, true);
    }
  }

  function renderDetailState(t) {
    if (!t) return;
    $("detail-title").textContent = t.name || t.task_type || "Task";
    $("detail-id").textContent = t.task_id;
    const holder = $("detail-progress");
    if (!holder.firstChild) {
      holder.append(el("div", {class: "progress-cell"},
        el("div", {class: "bar", role: "progressbar"}, el("div", {class: "bar-fill"})),
        el("span", {class: "progress-text"})));
    }
    setBar(holder, t);
    let box = $("detail-actions").firstChild;
    if (!box) { box = el("div", {class: "actions"}); $("detail-actions").append(box); }
    setActions(box, t, false);
    const fields = [
      ["Status", el("span", {class: "status s-" + (t.status || "pending"), text: t.status || "pending"})],
      ["Type", t.task_type], ["User", t.user_id], ["Step", stepText(t)], ["ETA", etaText(t)],
      ["Queue", t.queue], ["Worker", t.worker], ["Retries", t.retries],
      ["Published", clock(t.published_at)], ["Started", clock(t.started_at)], ["Finished", clock(t.finished_at)],
      ["Tags", (t.tags || []).join(", ")],
    ];
    if (t.metadata && Object.keys(t.metadata).length) fields.push(["Metadata", JSON.stringify(t.metadata)]);
    if (t.result != null) fields.push(["Result", JSON.stringify(t.result)]);
    $("detail-fields").replaceChildren(...fields.filter(([, v]) => v != null && v !== "" && v !== "-").flatMap(([k, v]) =>
      [el("dt", {text: k}), el("dd", {}, typeof v === "object" ? v : String(v))]));
    // Arguments and the Re-run button live in task-args.js.
    if (window.trackerTaskArgs) window.trackerTaskArgs.render($("detail-args"), t, {api, toast, select, admin: !!(state.user && state.user.admin)});
    const err = $("detail-error");
    const msg = [t.error_type, t.error_message].filter(Boolean).join(": ");
    err.hidden = !msg && !t.traceback;
    err.textContent = msg + (t.traceback ? "\n\n" + t.traceback : "");
  }

  function appendLog(ln, live) {
    const box = $("detail-logs");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    const level = ln.level || "INFO";
    const placeholder = box.querySelector(".log-empty");
    if (placeholder) placeholder.remove();
    box.append(el("div", {class: "log-line"}, el("span", {class: "log-ts", text: clock(ln.ts) + " "}),
      el("span", {class: "log-" + level, text: level.padEnd(8)}), " " + (ln.message || "")));
    state.logCount += 1;
    while (box.childElementCount > 1000) box.firstChild.remove();
    if (atBottom || !live) box.scrollTop = box.scrollHeight;
  }

  function extendChart(ts, progress) {
    const div = $("detail-chart");
    if (!window.Plotly || !div.data || progress == null) return;
    Plotly.extendTraces(div, {x: [[new Date(ts * 1000).toISOString()]], y: [[progress]], text: [[""]]}, [0]);
  }

  // -- notifications ---------------------------------------------------------------------------------------
  async function loadNotifications() {
    const seq = ++state.bellSeq;
    try {
      const [page, stats] = await Promise.all([api("GET", "/notifications?limit=30"), api("GET", "/notifications/stats")]);
      // A read started before a later one, or before a notification was marked read here, may
      // answer after it: its count would undo the newer state.
      if (seq !== state.bellSeq) return;
      state.notifications = page.items;
      state.unread = stats.unread;
      renderBell();
    } catch (err) {
      /* the bell stays as it was; the banner tells about connectivity */
    }
  }

  function onNotification(frame) {
    const n = Object.assign({}, frame.data || {});
    if (n.id == null) { loadNotifications(); return; }
    if (state.notifications.some((x) => x.id === n.id)) return;
    state.notifications.unshift(n);
    state.notifications = state.notifications.slice(0, 30);
    if (!n.is_read) state.unread += 1;
    renderBell();
    toast(n.title || "New notification");
    // The count shown is the store's: a REST read racing this event may have counted it already.
    clearTimeout(state.bellTimer);
    state.bellTimer = setTimeout(loadNotifications, 300);
  }

  function renderBell() {
    const badge = $("unread");
    badge.textContent = state.unread > 99 ? "99+" : String(state.unread);
    badge.hidden = state.unread <= 0;
    const list = $("notification-list");
    if (!state.notifications.length) {
      list.replaceChildren(el("li", {class: "empty", text: "Nothing yet."}));
      return;
    }
    list.replaceChildren(...state.notifications.map((n) => el("li", {
      class: n.is_read ? "" : "unread", "data-notification-id": String(n.id),
      onclick: () => markRead(n),
    }, el("span", {class: "n-title", text: n.title || "(untitled)"}),
    n.message ? el("span", {text: n.message}) : null,
    el("span", {class: "n-meta", text: [n.priority, n.type, clock(n.created_at)].filter(Boolean).join(" - ")}))));
  }

  async function markRead(n) {
    if (n.task_id && state.tasks.has(n.task_id)) select(n.task_id);
    if (n.is_read) return;
    try {
      const updated = await api("PATCH", `/notifications/${n.id}/read`);
      state.bellSeq += 1;  // a read still in flight was answered before this change
      Object.assign(n, updated);
      state.unread = Math.max(0, state.unread - 1);
      renderBell();
      clearTimeout(state.bellTimer);  // then the store's own view, read after the change
      state.bellTimer = setTimeout(loadNotifications, 300);
    } catch (err) {
      toast("Could not mark it read: " + err.message, true);
    }
  }

  async function markAllRead() {
    for (const n of state.notifications.filter((x) => !x.is_read)) await markRead(n);
  }

  // -- charts ------------------------------------------------------------------------------------------------
  async function loadCharts() {
    if (!window.Plotly || !state.token) return;
    const since = encodeURIComponent($("chart-range").value);
    const offset = -new Date().getTimezoneOffset();
    const bucket = {"-1h": "1m", "-24h": "30m", "-7d": "6h", "-30d": "1d"}[$("chart-range").value] || "1h";
    const jobs = [
      ["chart-status", `/visualizations/status-distribution?since=${since}`],
      ["chart-heatmap", `/visualizations/activity-heatmap?since=${since}&utc_offset=${offset}`],
      ["chart-performance", `/visualizations/performance-metrics?since=${since}&bucket=${bucket}`],
    ];
    await Promise.all(jobs.map(async ([id, path]) => {
      try {
        const fig = await api("GET", path);
        fig.layout.autosize = true;
        await Plotly.react(id, fig.data, fig.layout, PLOT_CONFIG);
        $(id).dataset.rendered = "true";
      } catch (err) {
        $(id).replaceChildren(el("p", {class: "error", text: "Chart unavailable: " + err.message}));
      }
    }));
    $("chart-updated").textContent = "Updated " + new Date().toLocaleTimeString();
    state.chartsLoaded = true;
  }

  function showView(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
    $("view-tasks").hidden = name !== "tasks";
    $("view-charts").hidden = name !== "charts";
    clearInterval(state.chartTimer);
    if (name === "charts") {
      loadCharts();
      state.chartTimer = setInterval(loadCharts, 30000);
    }
    history.replaceState(null, "", name === "charts" ? "#charts" : "#");
    if (window.trackerOps) window.trackerOps.show(name);  // the Workers and Queues tabs (ops.js)
  }

  // -- wiring ------------------------------------------------------------------------------------------------
  function tick() {
    // ETAs count down between events.
    for (const [id, row] of state.rows) {
      const t = state.tasks.get(id);
      if (t && !TERMINAL.has(t.status)) row._cells.eta.textContent = etaText(t);
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = $("login-button");
      button.disabled = true;
      try {
        await signIn($("token-input").value.trim());
        $("token-input").value = "";
      } catch (err) {
        showLogin(err.message);
      } finally {
        button.disabled = false;
      }
    });
    $("logout").addEventListener("click", () => signOut(""));
    $("search").addEventListener("input", render);
    $("status-filter").addEventListener("change", render);
    $("detail-close").addEventListener("click", closeDetail);
    $("bell").addEventListener("click", (e) => {
      e.stopPropagation();
      const box = $("notifications");
      box.hidden = !box.hidden;
      $("bell").setAttribute("aria-expanded", String(!box.hidden));
      if (!box.hidden) loadNotifications();
    });
    $("notifications").addEventListener("click", (e) => e.stopPropagation());
    document.addEventListener("click", () => { $("notifications").hidden = true; });
    $("mark-all").addEventListener("click", markAllRead);
    for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
    $("chart-refresh").addEventListener("click", loadCharts);
    $("chart-range").addEventListener("change", loadCharts);
    setInterval(tick, 1000);
    try {
      await vocabularyReady;
    } catch (err) {
      showLogin("The dashboard cannot start: " + err.message);
      return;
    }

    // A sign-in link (`tracker demo` prints one) carries the token in the fragment, which never
    // reaches the server or its access log; it is taken out of the address bar at once so it is
    // neither bookmarked nor left in the history.
    const linked = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
    if (linked !== null) {
      history.replaceState(null, "", location.pathname + location.search);
      const who = decodeToken(linked);
      if (!who) {
        showLogin("This sign-in link is malformed: paste a token instead.");
      } else if (who.exp && who.exp * 1000 <= Date.now()) {
        showLogin("This sign-in link has expired: ask for a new one or paste a token.");
      } else {
        signIn(linked).catch((err) => showLogin("This sign-in link did not work: " + err.message));
      }
      return;
    }

    const saved = localStorage.getItem(TOKEN_KEY);
    const who = saved && decodeToken(saved);
    if (who && (!who.exp || who.exp * 1000 > Date.now())) {
      start(saved, who);
      if (location.hash === "#charts") showView("charts");
    } else {
      if (saved) localStorage.removeItem(TOKEN_KEY);
      showLogin(saved ? "Your session has expired: sign in again." : "");
    }
  });

  // For tests and the console.
  window.trackerDashboard = {state, loadCharts, select, signOut, api, el, clock, duration, showView};
})();
