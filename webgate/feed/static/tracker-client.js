/*
 * tracker-client.js - browser client of the celery-tracking live feed (GET /api/v1/progress/ws).
 *
 *   const client = new TrackerClient("/api/v1/progress/ws", token, {
 *     onEvent(frame)    {},  // {type:"event", id, event:"task.progress", task_id, user_id, ts, data}
 *     onSnapshot(frame) {},  // {type:"snapshot", topic, tasks:[TaskRecord.to_dict(), ...]}
 *     onRecovered(frame){},  // {type:"recovered", topic, complete}  (complete:false -> a snapshot follows)
 *     onError(frame)    {},  // {type:"error", code, message, topic?, op?, task_id?}; the socket stays open
 *     onAck(frame)      {},  // {type:"ack", op, task_id}             (pause / resume / cancel)
 *     onMessage(frame)  {},  // every frame, after the handlers above
 *     onStatus(status, info) {},  // "connecting" | "open" | "reconnecting" | "closed"; info = {code, reason, delay}
 *     onAuthFailed(info) {},  // the server refused or expired the token (close 4001 / 4003); info = {code, reason}
 *   });
 *   client.subscribe("user:u-1");     // also "task:<id>", "group:<id>", "all" (admin)
 *   client.unsubscribe("user:u-1");
 *   client.pause(taskId); client.resume(taskId); client.cancel(taskId);
 *   client.send({op: "ping"});        // any op object
 *   client.close();                   // no reconnect after this
 *   client.lastEventId                // id of the newest event seen (the resume point)
 *   client.tokenExp                   // exp (epoch seconds) of the token the open socket runs on
 *
 * `url` may be absolute (ws:// or wss://), relative to the page, or omitted (this page's
 * /api/v1/progress/ws). `token` is a string or a token provider: a function returning a string or
 * a Promise of one.
 *
 * Authentication: the token never goes into the URL (where access logs and proxies would keep
 * it). The client opens the socket without one and sends {op: "auth", token} as its first frame;
 * the server answers {type: "ack", op: "auth", exp} and only then is the client "open" (topics are
 * subscribed, ops are sent). With a provider the client asks it again shortly before the token's
 * `exp` (options.refreshMargin, default 60 s, at most a quarter of the token's lifetime) and sends
 * the new token as {op: "auth"} on the open socket, which keeps it open past the old `exp`; the
 * provider is also asked before every reconnect. If the provider returns the same token, the
 * socket is closed by the server at `exp` (4001) and the client reconnects with whatever the
 * provider returns then. onAuthFailed is called on 4001/4003 closes; a string token that has
 * expired stops the reconnects (status "closed").
 *
 * The connection reconnects by itself with exponential backoff (options.minDelay 500 ms to
 * options.maxDelay 15 s, with jitter). After a reconnect every topic is subscribed again with
 * `since` = the last event id seen, so the server replays exactly what was missed (a topic
 * that never saw an event gets a fresh snapshot instead). Frames are delivered once: an event id
 * already seen is dropped. A socket silent for options.idleTimeout (default 45 s) is treated as
 * dead; the client pings every options.pingInterval (20 s) to keep it busy.
 */
(function (root) {
  "use strict";

  const WS_PATH = "/api/v1/progress/ws";

  function parseId(id) {
    const i = id.indexOf("-");
    return i < 0 ? [Number(id), 0] : [Number(id.slice(0, i)), Number(id.slice(i + 1))];
  }

  function newerId(a, b) {
    // true if stream id a is after b
    if (b == null) return true;
    const x = parseId(a), y = parseId(b);
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }

  function tokenClaims(token) {
    // The JWT's payload (not verified: the server does that); null if it is not a JWT.
    try {
      const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    } catch (err) {
      return null;
    }
  }

  function resolveUrl(url) {
    if (!url) url = WS_PATH;
    if (/^wss?:\/\//i.test(url)) return url;
    const loc = root.location;
    const abs = new URL(url, loc ? loc.href : "http://localhost/");
    abs.protocol = abs.protocol === "https:" ? "wss:" : "ws:";
    return abs.toString();
  }

  class TrackerClient {
    constructor(url, token, options) {
      this.url = resolveUrl(url);
      this.token = token;
      this.options = Object.assign({
        minDelay: 500, maxDelay: 15000, pingInterval: 20000, idleTimeout: 45000, dedupe: 2000,
        refreshMargin: 60000,
      }, options || {});
      this.lastEventId = null;
      this.status = "closed";
      this._topics = new Set();     // what the caller asked for
      this._waiting = new Set();    // topics re-subscribed after a reconnect, not yet recovered
      this._resumeId = null;        // safe point to resume from (advances once all topics recovered)
      this._seen = new Set();
      this._seenOrder = [];
      this._ws = null;
      this._attempt = 0;
      this._closed = false;
      this._timer = null;
      this._pinger = null;
      this._refresher = null;
      this._authed = false;         // the server acknowledged this socket's auth frame
      this._current = null;         // the token this socket runs on
      this._exp = null;             // its expiry (epoch seconds) as the server acknowledged it
      this._lastFrameAt = 0;
      this._connect();
    }

    // -- public API --------------------------------------------------------------------------------
    subscribe(topic) {
      if (typeof topic !== "string" || !topic) throw new TypeError("topic must be a non-empty string");
      if (this._topics.has(topic)) return;
      this._topics.add(topic);
      // A new topic starts from a snapshot; resuming it is only meaningful after a reconnect.
      this._sendRaw({op: "subscribe", topic: topic});
    }

    unsubscribe(topic) {
      this._topics.delete(topic);
      this._waiting.delete(topic);
      this._sendRaw({op: "unsubscribe", topic: topic});
    }

    pause(taskId) { return this.send({op: "pause", task_id: taskId}); }
    resume(taskId) { return this.send({op: "resume", task_id: taskId}); }
    cancel(taskId) { return this.send({op: "cancel", task_id: taskId}); }

    /** Send an op object; returns false if the socket is not open (ops are not queued). */
    send(op) {
      if (op === null || typeof op !== "object") throw new TypeError("op must be an object");
      return this._sendRaw(op);
    }

    get tokenExp() { return this._exp; }

    close() {
      this._closed = true;
      clearTimeout(this._timer);
      clearTimeout(this._refresher);
      clearInterval(this._pinger);
      if (this._ws) this._ws.close(1000, "client closed");
      this._setStatus("closed", {});
    }

    // -- connection ------------------------------------------------------------------------------------
    _setStatus(status, info) {
      this.status = status;
      this._call("onStatus", status, info);
    }

    _call(name, a, b) {
      const fn = this.options[name];
      if (typeof fn === "function") {
        try { fn.call(this, a, b); } catch (err) { if (root.console) root.console.error(err); }
      }
    }

    async _token() {
      const t = typeof this.token === "function" ? await this.token() : this.token;
      return t == null ? "" : String(t);
    }

    async _connect() {
      if (this._closed) return;
      this._setStatus(this._attempt ? "reconnecting" : "connecting", {attempt: this._attempt});
      let token;
      try {
        token = await this._token();
      } catch (err) {
        this._scheduleReconnect({code: 0, reason: "token: " + err});
        return;
      }
      if (this._closed) return;
      let ws;
      try {
        ws = new WebSocket(this.url);  // no token in the URL: it goes in the first frame
      } catch (err) {
        this._scheduleReconnect({code: 0, reason: String(err)});
        return;
      }
      this._ws = ws;
      this._authed = false;
      this._current = token;
      ws.onopen = () => this._onOpen(ws);
      ws.onmessage = (ev) => this._onMessage(ws, ev);
      ws.onclose = (ev) => this._onClose(ws, ev);
      ws.onerror = () => {};  // onclose follows with the code
    }

    _onOpen(ws) {
      if (ws !== this._ws) return;
      this._lastFrameAt = Date.now();
      ws.send(JSON.stringify({op: "auth", token: this._current}));
    }

    _onAuthed(ws, frame) {
      const first = !this._authed;
      this._authed = true;
      this._exp = typeof frame.exp === "number" ? frame.exp : null;
      this._scheduleRefresh(ws);
      if (!first) return;
      this._attempt = 0;
      this._setStatus("open", {});
      // Re-subscribe: resume from the last safe event id, or take a fresh snapshot.
      this._waiting = new Set();
      for (const topic of this._topics) {
        const msg = {op: "subscribe", topic: topic};
        if (this._resumeId != null) {
          msg.since = this._resumeId;
          this._waiting.add(topic);
        }
        this._sendRaw(msg);
      }
      clearInterval(this._pinger);
      this._pinger = setInterval(() => this._keepAlive(ws), this.options.pingInterval);
    }

    _keepAlive(ws) {
      if (ws !== this._ws) return;
      if (Date.now() - this._lastFrameAt > this.options.idleTimeout) {
        ws.close(4000, "idle");  // onclose reconnects
        return;
      }
      this._sendRaw({op: "ping"});
    }

    _onClose(ws, ev) {
      if (ws !== this._ws) return;
      this._ws = null;
      this._authed = false;
      clearInterval(this._pinger);
      clearTimeout(this._refresher);
      if (this._closed) return;
      const info = {code: ev.code, reason: ev.reason};
      if (ev.code === 4001 || ev.code === 4003) {
        this._call("onAuthFailed", info);
        if (this._closed) return;  // the handler may have closed the client
        const claims = tokenClaims(this._current);
        if (typeof this.token !== "function" && claims && typeof claims.exp === "number"
            && claims.exp * 1000 <= Date.now()) {
          // A fixed token that has expired can never authenticate again.
          this._closed = true;
          this._setStatus("closed", info);
          return;
        }
      }
      this._scheduleReconnect(info);
    }

    // -- token refresh -----------------------------------------------------------------------------------
    _scheduleRefresh(ws) {
      clearTimeout(this._refresher);
      const exp = this._exp;
      if (typeof this.token !== "function" || exp == null) return;
      const claims = tokenClaims(this._current);
      const now = Date.now();
      const lifetime = claims && typeof claims.iat === "number" ? (exp - claims.iat) * 1000 : exp * 1000 - now;
      const margin = Math.min(this.options.refreshMargin, Math.max(0, lifetime) / 4);
      const delay = Math.max(0, exp * 1000 - margin - now);
      this._refresher = setTimeout(() => this._refresh(ws), delay);
    }

    _retryRefresh(ws) {
      // Nothing usable yet: ask again a little later (until the server closes the socket at exp).
      clearTimeout(this._refresher);
      const left = this._exp == null ? 0 : this._exp * 1000 - Date.now();
      if (left > 0) this._refresher = setTimeout(() => this._refresh(ws), Math.max(100, Math.min(1000, left / 2)));
    }

    async _refresh(ws) {
      if (ws !== this._ws || !this._authed) return;
      let token;
      try {
        token = await this._token();
      } catch (err) {
        token = null;
      }
      if (ws !== this._ws || !this._authed) return;
      if (!token || token === this._current) {
        this._retryRefresh(ws);
        return;
      }
      this._current = token;
      ws.send(JSON.stringify({op: "auth", token: token}));  // the ack moves the next refresh
    }

    _scheduleReconnect(info) {
      if (this._closed) return;
      const o = this.options;
      // 1013: the server dropped us for being slow - come back soon and resume.
      const base = info.code === 1013 ? o.minDelay : Math.min(o.maxDelay, o.minDelay * Math.pow(2, this._attempt));
      const delay = Math.round(base * (0.75 + Math.random() * 0.5));
      this._attempt += 1;
      this._setStatus("reconnecting", Object.assign({delay: delay}, info));
      clearTimeout(this._timer);
      this._timer = setTimeout(() => this._connect(), delay);
    }

    _sendRaw(obj) {
      const ws = this._ws;
      if (!ws || ws.readyState !== 1 || !this._authed) return false;
      ws.send(JSON.stringify(obj));
      return true;
    }

    // -- frames ------------------------------------------------------------------------------------------
    _onMessage(ws, ev) {
      if (ws !== this._ws) return;
      this._lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(ev.data); } catch (err) { return; }
      if (!frame || typeof frame !== "object") return;
      switch (frame.type) {
        case "event":
          if (!this._remember(frame.id)) return;
          if (frame.id && newerId(frame.id, this.lastEventId)) this.lastEventId = frame.id;
          if (this._waiting.size === 0) this._resumeId = this.lastEventId;
          this._call("onEvent", frame);
          break;
        case "snapshot":
          this._call("onSnapshot", frame);
          break;
        case "recovered":
          this._waiting.delete(frame.topic);
          if (this._waiting.size === 0) this._resumeId = this.lastEventId;
          this._call("onRecovered", frame);
          break;
        case "error":
          this._waiting.delete(frame.topic);
          if (frame.op === "auth" && this._authed) this._retryRefresh(ws);  // a refused refresh
          this._call("onError", frame);
          break;
        case "ack":
          if (frame.op === "auth") this._onAuthed(ws, frame);  // the client's own business (onMessage sees it)
          else this._call("onAck", frame);
          break;
        default:
          break;
      }
      this._call("onMessage", frame);
    }

    _remember(id) {
      if (!id) return true;
      if (this._seen.has(id)) return false;
      this._seen.add(id);
      this._seenOrder.push(id);
      if (this._seenOrder.length > this.options.dedupe) this._seen.delete(this._seenOrder.shift());
      return true;
    }
  }

  TrackerClient.WS_PATH = WS_PATH;
  if (typeof module !== "undefined" && module.exports) module.exports = TrackerClient;
  else root.TrackerClient = TrackerClient;
})(typeof globalThis !== "undefined" ? globalThis : this);
