// chatd-client.js: the chatd browser client library (protocol v1), one ES module, no
// dependencies. Owns one WebSocket to one chatd node at a time, multiplexing every joined
// room on it; the token's lifetime (refresh frame before exp); reconnection with jittered
// exponential backoff rotating over the node URLs; per-room last-seq bookkeeping so that
// recovery (since= / join{since} / HTTP paging on gap_too_large) shows no gap and no
// duplicate; the outbox of un-acked messages, resent with the same id after a reconnect;
// the user's read state per room (read / read_ack / receipts, GET /rooms/unread); message
// updates (v2: edit, delete, react) through the same outbox and seq order.
// API and event list: docs/client.md.

const DEFAULTS = {
  backoffMinMs: 250,        // first retry delay cap; retry n waits in [cap/2, cap], cap = min * 2^n
  backoffMaxMs: 10000,      // the cap never grows past this
  refreshMarginMs: 30000,   // refresh this long before exp (at most 25 % of the lifetime)
  welcomeTimeoutMs: 10000,  // no welcome this long after the connect began: drop it and retry
  stableAfterMs: 5000,      // a connection that lived this long resets the backoff
  typingThrottleMs: 2500,   // at most one typing frame per room per this interval
  maxFrameBytes: 65536,     // refuse locally what the server would close 1009 for
  historyPageLimit: 200,    // page size used when filling a gap over HTTP
  maxGapPages: 20,          // beyond this many pages a gap is given up (event "reset")
  retryUnavailableMs: 2000, // resend delay after an "unavailable" error for a message
};

const CLOSE_TOKEN_EXPIRED = 4001;

function decodeJwtPayload(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return null;
    let b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function randomId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') {
    return globalThis.crypto.randomUUID();
  }
  const a = new Uint8Array(16);
  globalThis.crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function trimSlash(u) {
  return String(u).replace(/\/+$/, '');
}

// ws://h:p -> http://h:p, wss:// -> https://
export function httpBaseFromWs(wsUrl) {
  return trimSlash(wsUrl).replace(/^ws(s?):\/\//i, 'http$1://');
}

// The read seq a welcome or join answer (presence_state) states, or null when it is unknown: the
// server could not read the read state in time and says "read_seq": 0 with
// "read_seq_pending": true (an integer all the same, for strictly typed clients); the value
// follows as the user's own read receipt. A null read_seq (what chatd sent there before) is
// unknown too.
export function frameReadSeq(f) {
  if (!f || f.read_seq_pending === true || f.read_seq === undefined || f.read_seq === null) return null;
  return f.read_seq;
}

export class ChatdClient {
  constructor(opts = {}) {
    if (!Array.isArray(opts.urls) || opts.urls.length === 0) {
      throw new Error('ChatdClient: urls must be a non-empty array of ws:// base URLs');
    }
    if (typeof opts.tokenProvider !== 'function') {
      throw new Error('ChatdClient: tokenProvider must be an async function returning a JWT');
    }
    const rooms = opts.rooms || [];
    if (rooms.length === 0) throw new Error('ChatdClient: rooms must name at least one room');
    this.opts = { ...DEFAULTS, ...opts };
    this.urls = opts.urls.map(trimSlash);
    this.tokenProvider = opts.tokenProvider;
    this._WebSocket = opts.WebSocket || globalThis.WebSocket;
    this._fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this._listeners = new Map();
    this._homeRoom = rooms[0];
    this._rooms = new Map(); // room -> {seq: number|null, joined: bool, recovering: null|{buffer}}
    for (const r of rooms) this._roomState(r);
    this._outbox = new Map(); // id -> {id, room, body, sent: bool, seq: number|null}
    this._token = null;
    this._tokenExp = 0;       // ms since epoch
    this._tokenLifetime = 0;  // ms
    this._ws = null;
    this._urlIndex = 0;
    this._attempt = 0;
    this._state = 'idle';
    this._closedByUser = false;
    this._welcome = null;
    this._typingSent = new Map();
    this._timers = { reconnect: null, refresh: null, heartbeat: null, watchdog: null, welcome: null };
    this._lastRx = 0;
    this._openedAt = 0;
    this._restartHint = false;
    this._failuresBeforeWelcome = 0;
    this._lastRefreshRetry = 0;
    this.stats = { connects: 0, duplicatesDropped: 0, gapFills: 0, resent: 0, refreshes: 0, epochResets: 0 };
  }

  // ---- events ---------------------------------------------------------------------------
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    const s = this._listeners.get(type);
    if (s) s.delete(fn);
  }

  _emit(type, data) {
    const s = this._listeners.get(type);
    if (!s) return;
    for (const fn of [...s]) {
      try {
        fn(data);
      } catch (e) {
        // a listener's bug must not break the connection logic
        setTimeout(() => { throw e; });
      }
    }
  }

  // ---- public state ---------------------------------------------------------------------
  get state() { return this._state; }
  get user() { return this._welcome ? this._welcome.user : null; }
  get node() { return this._welcome ? this._welcome.node : null; }
  get url() { return this._ws ? this._currentUrl : null; }
  get rooms() { return [...this._rooms.keys()].filter((r) => this._rooms.get(r).wanted); }
  get token() { return this._token; }
  lastSeq(room) { const st = this._rooms.get(room); return st ? st.seq : null; }
  // The epoch of the room's seq numbering the server last stated (welcome / join answer).
  epoch(room) { const st = this._rooms.get(room); return st ? st.epoch : null; }
  pending() { return [...this._outbox.values()].map((m) => ({ ...m })); }

  // ---- lifecycle ------------------------------------------------------------------------
  connect() {
    if (this._state !== 'idle' && this._state !== 'closed') return this;
    this._closedByUser = false;
    this._setState('connecting');
    this._open();
    return this;
  }

  close() {
    this._closedByUser = true;
    this._clearTimers();
    if (this._ws) this._dropSocket(1000, 'client closed');
    this._setState('closed');
  }

  // ---- rooms ----------------------------------------------------------------------------
  join(room, { since, epoch } = {}) {
    const st = this._roomState(room);
    st.wanted = true;
    if (since !== undefined && since !== null) st.seq = since;
    if (epoch) st.epoch = String(epoch);
    if (this._isOpen() && !st.joined) this._sendJoin(room);
  }

  leave(room) {
    const st = this._rooms.get(room);
    if (!st) return;
    st.wanted = false;
    st.recovering = null;
    st.seq = null; // a later join starts from the room's head, not with a replay of the absence
    st.epoch = null;
    if (this._isOpen() && st.joined) this._sendFrame({ type: 'leave', room });
    st.joined = false;
  }

  // ---- sending --------------------------------------------------------------------------
  // Returns the client message id. The message stays in the outbox until its ack arrives,
  // and is resent with the same id after every reconnect until then.
  send(room, body, { id } = {}) {
    const mid = id || randomId();
    const entry = { id: mid, room, body: String(body), sent: false, seq: null };
    const frame = JSON.stringify({ type: 'message', room, body: entry.body, id: mid });
    if (new TextEncoder().encode(frame).length > this.opts.maxFrameBytes) {
      const err = { type: 'error', code: 'too_large', message: 'message exceeds the frame size limit', id: mid, room };
      queueMicrotask(() => this._emit('error', err));
      return mid;
    }
    this._outbox.set(mid, entry);
    const st = this._rooms.get(room);
    if (this._isOpen() && st && st.joined) this._sendOutboxEntry(entry);
    return mid;
  }

  typing(room) {
    const now = Date.now();
    const last = this._typingSent.get(room) || 0;
    if (now - last < this.opts.typingThrottleMs) return false;
    const st = this._rooms.get(room);
    if (!this._isOpen() || !st || !st.joined) return false;
    this._typingSent.set(room, now);
    this._sendFrame({ type: 'typing', room });
    return true;
  }

  // ---- message updates (v2) --------------------------------------------------------------
  // Each returns the update's client id. Like a message it stays in the outbox until its ack
  // (resent with the same id after a reconnect); the server's message_update frame is the
  // 'update' event. Refusals come as 'error' events with the id and failed: true.
  editMessage(room, target, body, { id } = {}) {
    return this._sendUpdate({ type: 'edit', room, target: Number(target), body: String(body) }, id);
  }

  deleteMessage(room, target, { id } = {}) {
    return this._sendUpdate({ type: 'delete', room, target: Number(target) }, id);
  }

  // on: true adds the reaction, false removes it (each user at most once per emoji).
  react(room, target, emoji, on = true, { id } = {}) {
    return this._sendUpdate({ type: 'react', room, target: Number(target), emoji: String(emoji), on: !!on }, id);
  }

  _sendUpdate(frame, id) {
    const mid = id || randomId();
    const entry = { id: mid, room: frame.room, kind: frame.type, frame: { ...frame, id: mid }, sent: false, seq: null };
    this._outbox.set(mid, entry);
    const st = this._rooms.get(frame.room);
    if (this._isOpen() && st && st.joined) this._sendOutboxEntry(entry);
    return mid;
  }

  // ---- HTTP -----------------------------------------------------------------------------
  // GET /rooms/{room}/messages; tries the connected node first, then the others.
  async history(room, { before, limit } = {}) {
    const q = new URLSearchParams();
    if (before !== undefined && before !== null) q.set('before', String(before));
    if (limit) q.set('limit', String(limit));
    return this._httpGet(`/rooms/${encodeURIComponent(room)}/messages`, q);
  }

  async presence(room) {
    return this._httpGet(`/rooms/${encodeURIComponent(room)}/presence`, new URLSearchParams());
  }

  _httpBases() {
    const bases = this.urls.map(httpBaseFromWs);
    const cur = this._ws && this._welcome ? httpBaseFromWs(this._currentUrl) : null;
    if (cur) return [cur, ...bases.filter((b) => b !== cur)];
    return bases;
  }

  async _httpGet(path, query) {
    const token = await this._validToken();
    let lastErr = null;
    for (const base of this._httpBases()) {
      const q = new URLSearchParams(query);
      const headers = {};
      // Same origin: Authorization header. Cross origin: the token in the query string, so
      // the request stays "simple" (no CORS preflight); the node must still allow the origin.
      const sameOrigin = typeof location !== 'undefined' && new URL(base).origin === location.origin;
      if (sameOrigin || typeof location === 'undefined') headers.Authorization = `Bearer ${token}`;
      else q.set('token', token);
      const qs = q.toString();
      let res;
      try {
        res = await this._fetch(`${base}${path}${qs ? `?${qs}` : ''}`, { headers, cache: 'no-store' });
      } catch (e) {
        lastErr = e; // node down or cross-origin refused: try the next node
        continue;
      }
      if (res.ok) return res.json();
      const text = await res.text().catch(() => '');
      const err = new Error(`GET ${path}: HTTP ${res.status} ${text.trim()}`);
      err.status = res.status;
      if (res.status >= 500) { lastErr = err; continue; }
      throw err;
    }
    throw lastErr || new Error(`GET ${path}: no node reachable`);
  }

  // ---- internals: token -----------------------------------------------------------------
  _setToken(token) {
    this._token = token;
    const p = decodeJwtPayload(token);
    const now = Date.now();
    if (p && typeof p.exp === 'number') {
      this._tokenExp = p.exp * 1000;
      const from = typeof p.iat === 'number' ? p.iat * 1000 : now;
      this._tokenLifetime = Math.max(1000, this._tokenExp - Math.min(from, now));
    } else {
      this._tokenExp = 0;
      this._tokenLifetime = 0;
    }
  }

  _refreshMargin() {
    if (!this._tokenLifetime) return 0;
    return Math.max(500, Math.min(this.opts.refreshMarginMs, this._tokenLifetime * 0.25));
  }

  _tokenFresh() {
    if (!this._token) return false;
    if (!this._tokenExp) return true; // no exp we could read: trust it
    return this._tokenExp - Date.now() > this._refreshMargin();
  }

  async _fetchToken() {
    const t = await this.tokenProvider();
    if (!t || typeof t !== 'string') throw new Error('tokenProvider returned no token');
    this._setToken(t);
    return t;
  }

  async _validToken() {
    if (this._tokenFresh()) return this._token;
    return this._fetchToken();
  }

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (!this._tokenExp) return;
    const delay = Math.max(0, this._tokenExp - this._refreshMargin() - Date.now());
    this._timers.refresh = setTimeout(() => this._refresh(), delay);
  }

  async _refresh(retry = 0) {
    this._timers.refresh = null;
    if (!this._isOpen()) return;
    const ws = this._ws;
    const oldExp = this._tokenExp;
    let token;
    try {
      token = await this._fetchToken();
      if (oldExp && this._tokenExp <= oldExp) throw new Error('tokenProvider returned a token that does not expire later');
    } catch (e) {
      this._emit('error', { type: 'error', code: 'token_provider', message: String(e && e.message || e) });
      if (retry < 5 && this._ws === ws && Date.now() < oldExp) {
        this._timers.refresh = setTimeout(() => this._refresh(retry + 1), 1000 * (retry + 1));
      }
      return;
    }
    if (this._ws !== ws || !this._isOpen()) return; // reconnect will use the new token anyway
    this._sendFrame({ type: 'refresh', token });
    this.stats.refreshes++;
    this._emit('token', { exp: this._tokenExp });
    this._scheduleRefresh();
  }

  // ---- internals: socket ----------------------------------------------------------------
  _isOpen() {
    return this._state === 'open' && this._ws && this._ws.readyState === 1;
  }

  _setState(state, extra = {}) {
    this._state = state;
    this._emit('status', { state, attempt: this._attempt, url: this._currentUrl || null, node: this.node, ...extra });
  }

  _roomState(room) {
    let st = this._rooms.get(room);
    if (!st) {
      st = {
        seq: null, epoch: null, joined: false, wanted: true, recovering: null, epochReset: false,
        // read state (section "read state" below): the stored read seq, the one asked for
        readSeq: null, readWant: 0, readInFlight: 0,
      };
      this._rooms.set(room, st);
    }
    return st;
  }

  _urlRoom() {
    const wanted = this.rooms;
    return wanted.length ? wanted[0] : this._homeRoom;
  }

  async _open() {
    if (this._closedByUser) return;
    let token;
    try {
      // After two failures before welcome the token may be the reason (HTTP 401 is invisible
      // to a browser WebSocket): fetch a new one.
      if (this._failuresBeforeWelcome >= 2) this._token = null;
      token = await this._validToken();
    } catch (e) {
      this._emit('error', { type: 'error', code: 'token_provider', message: String(e && e.message || e) });
      this._scheduleReconnect();
      return;
    }
    if (this._closedByUser) return;
    const base = this.urls[this._urlIndex % this.urls.length];
    const room = this._urlRoom();
    const st = this._roomState(room);
    const q = new URLSearchParams({ token });
    if (st.seq !== null) q.set('since', String(st.seq));
    if (st.seq !== null && st.epoch) q.set('epoch', st.epoch);
    const url = `${base}/ws/${encodeURIComponent(room)}?${q}`;
    this._currentUrl = base;
    this._urlRoomName = room;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._emit('error', { type: 'error', code: 'connect', message: String(e && e.message || e) });
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._welcome = null;
    for (const s of this._rooms.values()) { s.joined = false; s.recovering = null; }
    // covers a TCP connect that hangs as well as an upgrade without welcome
    clearTimeout(this._timers.welcome);
    this._timers.welcome = setTimeout(() => {
      if (this._ws === ws && !this._welcome) this._lost(ws, 'no welcome');
    }, this.opts.welcomeTimeoutMs);
    ws.onopen = () => {
      if (this._ws === ws) this._lastRx = Date.now();
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastRx = Date.now();
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      if (f && typeof f.type === 'string') this._onFrame(f);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._lost(ws, ev.reason || 'closed', ev.code);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  // The socket is gone (closed, or declared dead by a watchdog).
  _lost(ws, reason, code) {
    if (this._ws !== ws) return;
    const hadWelcome = !!this._welcome;
    this._dropSocket(4000, reason);
    if (this._closedByUser) return;
    if (!hadWelcome) this._failuresBeforeWelcome++;
    if (code === CLOSE_TOKEN_EXPIRED) this._token = null; // never reuse an expired token
    // a connection that worked for a while (or a announced restart) resets the backoff and
    // retries soon; one that keeps dropping right after welcome backs off like a failure
    const stable = hadWelcome && Date.now() - this._openedAt >= this.opts.stableAfterMs;
    if (stable || this._restartHint) this._attempt = 0;
    this._restartHint = false;
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this._emit('disconnect', { code: code || null, reason });
    this._scheduleReconnect();
  }

  _dropSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._welcome = null;
    clearInterval(this._timers.heartbeat);
    clearInterval(this._timers.watchdog);
    clearTimeout(this._timers.welcome);
    clearTimeout(this._timers.refresh);
    this._timers.heartbeat = this._timers.watchdog = this._timers.welcome = this._timers.refresh = null;
    for (const s of this._rooms.values()) { s.joined = false; s.recovering = null; s.readInFlight = 0; }
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(code === 1000 ? 1000 : 4000, String(reason).slice(0, 100));
    } catch { /* already closing */ }
  }

  _scheduleReconnect() {
    if (this._closedByUser) return;
    clearTimeout(this._timers.reconnect);
    const n = this._attempt++;
    const cap = Math.min(this.opts.backoffMaxMs, this.opts.backoffMinMs * 2 ** n);
    // "equal jitter": between half the cap and the cap, so that the clients of a crashed node
    // spread out
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
    this._setState('reconnecting', { delayMs: delay });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delay);
  }

  // Skip the wait (e.g. the browser came back online).
  reconnectNow() {
    if (this._state !== 'reconnecting' || !this._timers.reconnect) return;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._open();
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) {
      clearTimeout(this._timers[k]);
      clearInterval(this._timers[k]);
      this._timers[k] = null;
    }
  }

  _sendFrame(obj) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(obj));
    return true;
  }

  _sendJoin(room) {
    const st = this._roomState(room);
    const f = { type: 'join', room };
    if (st.seq !== null) f.since = st.seq;
    if (st.seq !== null && st.epoch) f.epoch = st.epoch;
    this._sendFrame(f);
    st.joined = true; // optimistic: frames for it are accepted from now on
  }

  _sendOutboxEntry(e) {
    if (this._sendFrame(e.frame || { type: 'message', room: e.room, body: e.body, id: e.id })) {
      if (e.sent) this.stats.resent++;
      e.sent = true;
    }
  }

  _flushOutbox() {
    for (const e of this._outbox.values()) {
      const st = this._rooms.get(e.room);
      if (st && st.joined) this._sendOutboxEntry(e);
    }
  }

  // ---- internals: frames ----------------------------------------------------------------
  _onFrame(f) {
    switch (f.type) {
      case 'welcome': return this._onWelcome(f);
      case 'message': return this._onMessage(f);
      case 'message_update': return this._onMessage(f); // same seq order as messages
      case 'ack': return this._onAck(f);
      case 'presence_state': return this._onPresenceState(f);
      case 'presence': return this._emit('presence', f);
      case 'typing': return this._emit('typing', f);
      case 'heartbeat_ack': return undefined;
      case 'read_ack': return this._onReadAck(f);
      case 'read': return this._onReceipt(f);
      case 'error': return this._onError(f);
      default: return this._emit('frame', f);
    }
  }

  _onWelcome(f) {
    this._welcome = f;
    clearTimeout(this._timers.welcome);
    this._openedAt = Date.now();
    this._failuresBeforeWelcome = 0;
    this.stats.connects++;
    const room = f.room || this._urlRoomName;
    const st = this._roomState(room);
    st.joined = true;
    this._onHead(room, f);
    const hb = Number(f.heartbeat_ms) > 0 ? Number(f.heartbeat_ms) : 10000;
    this._timers.heartbeat = setInterval(() => this._sendFrame({ type: 'heartbeat' }), hb);
    // nothing at all from the server for this long (heartbeat_acks included): declare it dead
    const ws = this._ws;
    const deadAfter = hb * 2 + 5000;
    this._timers.watchdog = setInterval(() => {
      if (this._ws === ws && Date.now() - this._lastRx > deadAfter) this._lost(ws, 'server silent');
    }, Math.min(hb, 5000));
    this._setState('open', { node: f.node, user: f.user });
    this._onReadSeq(room, frameReadSeq(f));
    this._emit('welcome', f);
    this._flushRead(room);
    this._scheduleRefresh();
    // a leave of the URL room that happened while offline
    if (!st.wanted) { this._sendFrame({ type: 'leave', room }); st.joined = false; }
    for (const [r, s] of this._rooms) {
      if (r !== room && s.wanted) this._sendJoin(r);
    }
    this._flushOutbox();
  }

  _onPresenceState(f) {
    this._onHead(f.room, f);
    this._onReadSeq(f.room, frameReadSeq(f));
    this._emit('presence_state', f);
    this._flushRead(f.room);
  }

  // The room's head and epoch as the server states them (welcome, join answer). Another epoch
  // than ours means the room's seqs started again (a server without durable history lost
  // them): the seqs we hold belong to the old numbering, so we start over from the head,
  // tell the app ('reset'), and ignore the gap_too_large that the server sends for our old
  // since (there is nothing to page: the old messages are gone).
  _onHead(room, f) {
    const st = this._rooms.get(room);
    if (!st) return;
    const head = typeof f.seq === 'number' ? f.seq : null;
    const epoch = typeof f.epoch === 'string' && f.epoch ? f.epoch : null;
    if (epoch && st.epoch && epoch !== st.epoch) {
      st.epochReset = st.seq !== null; // we sent since + epoch: gap_too_large follows
      st.epoch = epoch;
      st.seq = head;
      st.recovering = null;
      this.stats.epochResets++;
      this._emit('reset', { room, seq: head, epoch, reason: 'epoch' });
      return;
    }
    if (epoch) st.epoch = epoch;
    if (st.seq === null && head !== null) st.seq = head;
  }

  _onMessage(f) {
    const st = this._rooms.get(f.room);
    if (!st || !st.wanted) return; // a frame in flight for a room we left
    const seq = Number(f.seq);
    if (!Number.isFinite(seq)) return;
    // ids are per sender (protocol): only this user's message answers its outbox entry
    if (f.id && f.user === this.user && this._outbox.has(f.id)) this._outbox.get(f.id).seq = seq;
    if (st.recovering) {
      st.recovering.buffer.push(f);
      return;
    }
    if (st.seq !== null && seq <= st.seq) {
      this.stats.duplicatesDropped++;
      return;
    }
    if (st.seq !== null && seq > st.seq + 1) {
      // a hole: fetch what is missing over HTTP, hold live messages meanwhile
      this._fillGap(f.room, [f]);
      return;
    }
    st.seq = seq;
    this._emitEvent(f);
  }

  // A seq'd room event: 'message', or 'update' for a message_update frame.
  _emitEvent(f) {
    this._emit(f.type === 'message_update' ? 'update' : 'message', f);
  }

  _onAck(f) {
    const e = this._outbox.get(f.id);
    if (e) this._outbox.delete(f.id);
    this._emit('ack', f);
  }

  _onError(f) {
    if (f.room && !f.id && f.code === 'unavailable' && /^read state/.test(f.message || '')) {
      // a read mark that was not stored: try again shortly ("send read again"), or never
      // (a server without a database keeps no read state)
      const rst = this._rooms.get(f.room);
      if (rst) rst.readInFlight = 0;
      if (/send read again/.test(f.message)) setTimeout(() => this._flushRead(f.room), this.opts.retryUnavailableMs);
      else this._readOff = true;
      this._emit('error', { ...f, handled: true });
      return;
    }
    const est = f.code === 'gap_too_large' && f.room ? this._rooms.get(f.room) : null;
    if (est && est.epochReset) {
      // the answer to our since of the old epoch: already reset in _onHead
      est.epochReset = false;
      this._emit('error', { ...f, handled: true });
      return;
    }
    if (f.code === 'gap_too_large' || (f.code === 'unavailable' && !f.id)) {
      // unavailable without an id: a (re)join could not recover; treated like a gap
      // Without a room field the error may concern any joined room (a since= recovery, or
      // messages a node lost): checking a room that has no gap costs one history request.
      let rooms = f.room ? [f.room] : [];
      if (!f.room) {
        for (const [r, s] of this._rooms) if (s.wanted && s.joined && s.seq !== null) rooms.push(r);
      }
      this._emit('error', { ...f, handled: true });
      for (const r of rooms) this._fillGap(r, []);
      return;
    }
    if (f.code === 'server_restart') this._restartHint = true;
    if (f.code === 'unauthorized' && this._ws) {
      // refresh refused: try once more with a brand-new token; 4001 at exp otherwise
      this._token = null;
      clearTimeout(this._timers.refresh);
      if (Date.now() - this._lastRefreshRetry > 5000) {
        this._lastRefreshRetry = Date.now();
        this._timers.refresh = setTimeout(() => this._refresh(), 500);
      }
    }
    if (f.id && this._outbox.has(f.id)) {
      const e = this._outbox.get(f.id);
      if (f.code === 'unavailable') {
        // transient server trouble: the same id is safe to resend
        setTimeout(() => {
          if (this._outbox.has(e.id) && this._isOpen()) this._sendOutboxEntry(e);
        }, this.opts.retryUnavailableMs);
      } else {
        this._outbox.delete(f.id);
        f = { ...f, room: f.room || e.room, failed: true };
      }
    }
    this._emit('error', f);
  }

  // ---- read state --------------------------------------------------------------------
  // The user has seen `room` up to `seq`: sent as {"type":"read"} when it moves the stored
  // read seq forward, one frame in flight per room (a later call waits for the read_ack and
  // is then sent with the highest seq asked for), again after a reconnect if unanswered.
  markRead(room, seq) {
    const st = this._rooms.get(room);
    const n = Number(seq);
    if (!st || !st.wanted || !Number.isFinite(n) || n <= 0) return false;
    if (n <= Math.max(st.readWant, st.readSeq || 0)) return false;
    st.readWant = n;
    this._flushRead(room);
    return true;
  }

  // Gives the user a read state in room with nothing read (a `read` of seq 0, stored as
  // read_seq 0): from then on GET /rooms/unread lists the room and counts its messages, on
  // every device. For a room joined while it is empty, so that "joined, nothing read" can be
  // told apart from "never joined" (a join answers read_seq 0 for both). False when nothing
  // was sent (a read is on its way or stored already, or the server keeps no read state).
  startReadState(room) {
    const st = this._rooms.get(room);
    if (!st || !st.joined || !this._isOpen() || this._readOff) return false;
    if (st.readInFlight || st.readWant > 0 || st.readSeq) return false;
    this._sendFrame({ type: 'read', room, seq: 0 });
    return true;
  }

  // The stored read seq of room (null until the server said it: welcome / join answer).
  readSeq(room) { const st = this._rooms.get(room); return st ? st.readSeq : null; }

  // GET /rooms/unread: {rooms: [{room, seq, read_seq, unread}]} for every room the user has a
  // read state in (exact counts, the same on every device).
  async unread() {
    return this._httpGet('/rooms/unread', new URLSearchParams());
  }

  _flushRead(room) {
    const st = this._rooms.get(room);
    if (!st || !st.joined || st.readInFlight || !this._isOpen() || this._readOff) return;
    if (st.readSeq === null || st.readWant <= st.readSeq) return;
    st.readInFlight = st.readWant;
    this._sendFrame({ type: 'read', room, seq: st.readWant });
  }

  // A read seq the server stated (welcome, join answer, read_ack, our own receipt): it only
  // moves forward; 'read_state' tells the app. When it was unknown until now (a join answered
  // "read_seq_pending": true, frameReadSeq; the value came later as our own receipt), a read
  // asked for meanwhile is sent now (_flushRead waits for a known read seq).
  _onReadSeq(room, v) {
    const st = this._rooms.get(room);
    const n = Number(v);
    if (!st || v === undefined || v === null || !Number.isFinite(n)) return;
    if (st.readSeq !== null && n <= st.readSeq) return;
    const unknown = st.readSeq === null;
    st.readSeq = n;
    this._emit('read_state', { room, readSeq: n });
    if (unknown) this._flushRead(room);
  }

  _onReadAck(f) {
    const st = this._rooms.get(f.room);
    if (!st) return;
    st.readInFlight = 0;
    this._onReadSeq(f.room, f.seq);
    this._flushRead(f.room);
  }

  // A read receipt: somebody (maybe this user on another device) read the room up to seq.
  _onReceipt(f) {
    if (f.user && this.user && f.user === this.user) this._onReadSeq(f.room, f.seq);
    this._emit('read', f);
  }

  // Fetches the messages after the room's last seq over HTTP, newest page first, and emits
  // them in order together with any live messages that arrived meanwhile.
  async _fillGap(room, initial) {
    const st = this._rooms.get(room);
    if (!st || st.recovering) {
      if (st && st.recovering) st.recovering.buffer.push(...initial);
      return;
    }
    const rec = { buffer: [...initial] };
    st.recovering = rec;
    this.stats.gapFills++;
    const ws = this._ws;
    const from = st.seq === null ? 0 : st.seq; // emit seq > from
    const got = new Map();
    let reachedFrom = false;
    try {
      for (let tries = 0; tries < 6; tries++) {
        let cursor = null;
        for (let page = 0; page < this.opts.maxGapPages; page++) {
          const res = await this.history(room, { before: cursor, limit: this.opts.historyPageLimit });
          const msgs = (res && res.messages) || [];
          // history messages come in their current state (edited_ts, deleted, reactions)
          // history messages come in their current state (edited_ts, deleted, reactions); the
          // ones already delivered may have changed during the gap: 'state' tells the app
          for (const m of msgs) {
            if (m.seq > from) got.set(m.seq, { ...m, fromHistory: true });
            else this._emit('state', { ...m, room });
          }
          // stop paging once the page reaches back to what we already have
          if (msgs.length === 0 || msgs[0].seq <= from + 1 || !res.next_cursor || tries > 0) {
            reachedFrom = reachedFrom || msgs.length === 0 || msgs[0].seq <= from + 1 || !res.next_cursor;
            break;
          }
          cursor = res.next_cursor;
        }
        // live messages newer than the history show that history lags (ack after store): retry.
        // History lists messages only: a seq below its newest message that it lacks is a
        // message update (v2) or a message deleted from history, never a lag.
        const top = Math.max(0, ...rec.buffer.map((m) => Number(m.seq)));
        const histTop = Math.max(from, ...[...got.values()].filter((m) => m.fromHistory).map((m) => Number(m.seq)));
        let complete = true;
        for (let s = histTop + 1; s < top; s++) if (!got.has(s) && !rec.buffer.some((m) => m.seq === s)) { complete = false; break; }
        if (complete) break;
        await new Promise((r) => setTimeout(r, 300 * (tries + 1)));
        if (st.recovering !== rec || this._ws !== ws) return;
      }
    } catch (e) {
      this._emit('error', { type: 'error', code: 'history', room, message: String(e && e.message || e) });
    }
    if (st.recovering !== rec) return; // reconnected or left meanwhile: a new recovery runs
    st.recovering = null;
    for (const m of rec.buffer) got.set(Number(m.seq), m);
    const seqs = [...got.keys()].filter((s) => s > from).sort((a, b) => a - b);
    if (!reachedFrom && seqs.length) {
      this._emit('reset', { room, seq: seqs[0] - 1 });
    }
    let last = from;
    const histTop = Math.max(from, ...[...got.values()].filter((m) => m.fromHistory).map((m) => Number(m.seq)));
    for (const s of seqs) {
      if (st.seq !== null && s <= st.seq) continue;
      if (last && s > last + 1 && reachedFrom && s > histTop + 1) {
        this._emit('error', { type: 'error', code: 'gap', room, message: `messages ${last + 1}..${s - 1} missing` });
      }
      st.seq = s;
      last = s;
      this._emitEvent(got.get(s));
    }
  }
}

export default ChatdClient;
