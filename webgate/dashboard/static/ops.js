/* celery-tracking dashboard: the Workers and Queues tabs (admin).
 *
 * While one of the two tabs is shown, its table is refreshed from REST every few seconds
 * (GET /workers, GET /queues: the gateway samples the broker itself); the Queues tab also
 * draws the depth of each queue over time with Plotly (GET /queues/depth-chart), like the
 * other charts. It borrows the page's REST helper and token from dashboard.js
 * (window.trackerDashboard) and is driven by its showView().
 */
(function () {
  "use strict";

  const REFRESH_MS = 3000;
  const CHART_MS = 15000;
  const PLOT_CONFIG = {displayModeBar: false, responsive: true};
  const $ = (id) => document.getElementById(id);
  const ops = {view: null, timer: null, chartTimer: null, loading: false};

  function dash() { return window.trackerDashboard; }

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB"];
    let v = Number(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function ago(v) {
    if (!v) return "-";
    const seconds = (Date.now() - new Date(v).getTime()) / 1000;
    return dash().duration(Math.max(0, seconds)) + " ago";
  }

  function updated(id) { $(id).textContent = "Updated " + new Date().toLocaleTimeString(); }

  function denied(err, tbody, columns) {
    const text = err.status === 403 ? "Workers and queues need an admin token." : "Unavailable: " + err.message;
    tbody.replaceChildren(dash().el("tr", {}, dash().el("td", {colspan: String(columns), class: "muted", text})));
  }

  // -- workers ---------------------------------------------------------------------------------------------
  function workerRow(w) {
    const {el, clock} = dash();
    const active = w.active || [];
    return el("tr", {"data-hostname": w.hostname, "data-status": w.status},
      el("td", {}, el("strong", {text: w.hostname}), el("div", {class: "muted", text: "pid " + (w.pid ?? "-")})),
      el("td", {}, el("span", {class: "status s-" + w.status, text: w.status})),
      el("td", {text: w.concurrency ?? "-"}),
      el("td", {class: "worker-active", title: active.join("\n"), text: String(active.length)}),
      el("td", {text: String(w.processed ?? 0)}),
      el("td", {text: w.cpu_percent === null || w.cpu_percent === undefined ? "-" : w.cpu_percent.toFixed(1) + "%"}),
      el("td", {text: bytes(w.rss_bytes)}),
      el("td", {class: "muted", title: w.last_heartbeat || "", text: ago(w.last_heartbeat)}),
      el("td", {class: "muted", text: clock(w.started_at)}),
      el("td", {text: (w.queues || []).join(", ") || "-"}));
  }

  async function loadWorkers() {
    try {
      const page = await dash().api("GET", "/workers");
      const items = page.items || [];
      $("worker-rows").replaceChildren(...items.map(workerRow));
      $("workers-empty").hidden = items.length > 0;
      const online = items.filter((w) => w.status === "online").length;
      $("workers-counts").textContent = `${online} online, ${items.length - online} offline`;
      updated("workers-updated");
    } catch (err) {
      denied(err, $("worker-rows"), 10);
    }
  }

  // -- queues ----------------------------------------------------------------------------------------------
  function queueRow(item) {
    const {el, duration} = dash();
    const backlog = item.depth > 0 && item.consumers === 0;
    return el("tr", {"data-queue": item.name},
      el("td", {}, el("strong", {text: item.name})),
      el("td", {class: "queue-depth" + (backlog ? " backlog" : ""), text: String(item.depth)}),
      el("td", {text: String(item.consumers)}),
      el("td", {class: "muted", text: item.oldest_age_seconds === undefined ? "-" : duration(item.oldest_age_seconds)}));
  }

  async function loadQueues() {
    try {
      const report = await dash().api("GET", "/queues");
      $("queue-rows").replaceChildren(...(report.items || []).map(queueRow));
      $("queues-reason").textContent = report.reason ? "No queues: " + report.reason : "";
      updated("queues-updated");
    } catch (err) {
      denied(err, $("queue-rows"), 4);
    }
  }

  async function loadQueueChart() {
    if (!window.Plotly) return;
    try {
      const fig = await dash().api("GET", "/queues/depth-chart?since=-30m&bucket=10s");
      fig.layout.autosize = true;
      await Plotly.react("chart-queues", fig.data, fig.layout, PLOT_CONFIG);
      $("chart-queues").dataset.rendered = "true";
    } catch (err) {
      $("chart-queues").replaceChildren(dash().el("p", {class: "error", text: "Chart unavailable: " + err.message}));
    }
  }

  // -- driven by dashboard.js's showView ------------------------------------------------------------------
  async function refresh() {
    if (ops.loading || !dash() || !dash().state.token) return;
    ops.loading = true;
    try {
      if (ops.view === "workers") await loadWorkers();
      else if (ops.view === "queues") await loadQueues();
    } finally {
      ops.loading = false;
    }
  }

  function show(name) {
    $("view-workers").hidden = name !== "workers";
    $("view-queues").hidden = name !== "queues";
    clearInterval(ops.timer);
    clearInterval(ops.chartTimer);
    ops.view = name === "workers" || name === "queues" ? name : null;
    if (!ops.view) return;
    history.replaceState(null, "", "#" + name);
    refresh();
    ops.timer = setInterval(refresh, REFRESH_MS);
    if (name === "queues") {
      loadQueueChart();
      ops.chartTimer = setInterval(loadQueueChart, CHART_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const wanted = location.hash.replace(/^#/, "");
    if ((wanted === "workers" || wanted === "queues") && dash() && dash().state.token) dash().showView(wanted);
  });

  window.trackerOps = {show, refresh, loadQueueChart, state: ops};
})();
