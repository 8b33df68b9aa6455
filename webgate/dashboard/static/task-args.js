/*
 * celery-tracking dashboard: the task detail's arguments (args and kwargs, as stored: secrets
 * already "[redacted]" by the gateway and the hooks) and, for admins, the Re-run button
 * (POST /tasks/{id}/rerun). dashboard.js calls trackerTaskArgs.render() from its detail view.
 */
(function () {
  "use strict";

  const REDACTED = "[redacted]";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    if (text != null) node.textContent = text;
    return node;
  }

  function hasRedacted(value) {
    if (value === REDACTED) return true;
    if (Array.isArray(value)) return value.some(hasRedacted);
    if (value && typeof value === "object") return Object.values(value).some(hasRedacted);
    return false;
  }

  /** Why a task cannot be re-run, as the server would say it (null when it can). */
  function blocker(t) {
    if (t.args == null || t.kwargs == null) return "Its arguments were not stored.";
    if (!Array.isArray(t.args) || typeof t.kwargs !== "object" || Array.isArray(t.kwargs)) {
      return "Its arguments were too large to store in full.";
    }
    if (hasRedacted(t.args) || hasRedacted(t.kwargs)) return "Its arguments were redacted.";
    return null;
  }

  async function rerun(t, ctx, button) {
    button.disabled = true;
    try {
      const res = await ctx.api("POST", `/tasks/${encodeURIComponent(t.task_id)}/rerun`);
      ctx.toast(`Re-ran ${t.name || t.task_id} as ${res.task_id}`);
      if (ctx.select) ctx.select(res.task_id);
    } catch (err) {
      ctx.toast(`Re-run failed: ${err.message}`, true);
      button.disabled = false;
    }
  }

  /**
   * Fill `box` with the arguments of task `t`; `ctx` = {api, toast, select, admin}.
   * Rebuilt only when the arguments (or the task) change, so live updates cost nothing.
   */
  function render(box, t, ctx) {
    if (!box || !t) return;
    const key = JSON.stringify([t.task_id, t.args, t.kwargs, t.rerun_of, !!ctx.admin]);
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    const parts = [];
    if (t.args != null || t.kwargs != null) {
      parts.push(el("h3", {class: "args-title"}, "Arguments"));
      parts.push(el("pre", {class: "args", id: "detail-args-positional"}, "args: " + JSON.stringify(t.args)));
      parts.push(el("pre", {class: "args", id: "detail-args-keyword"}, "kwargs: " + JSON.stringify(t.kwargs, null, 1)));
    }
    if (t.rerun_of) {
      parts.push(el("p", {class: "muted"}, "Re-run of "));
      const link = el("button", {class: "link", id: "detail-rerun-of", onclick: () => ctx.select && ctx.select(t.rerun_of)},
        t.rerun_of);
      parts[parts.length - 1].append(link);
    }
    if (ctx.admin) {
      const why = blocker(t);
      const button = el("button", {id: "detail-rerun", class: "primary", "data-action": "rerun"}, "Re-run");
      if (why) {
        button.disabled = true;
        button.title = why;
      } else {
        button.addEventListener("click", () => rerun(t, ctx, button));
      }
      parts.push(button);
      if (why) parts.push(el("span", {class: "muted rerun-why"}, " " + why));
    }
    box.replaceChildren(...parts);
  }

  window.trackerTaskArgs = {render, blocker};
})();
