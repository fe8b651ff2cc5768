// app.js: the chatd browser UI. Owns the DOM of index.html: sign-in (dev token or ?token=),
// the room list (all rooms multiplexed on one socket by ChatdClient), one scrollable log per
// room with scroll-back through the history API (keyed by seq, so never a duplicate), own
// messages' pending -> sent -> acked state, the presence list, the typing line, the
// connection status, the read state (unread badges, the "new messages" divider, "seen by",
// `read` sent while the user looks at a room: section "read state"), and message updates (edit
// with up-arrow, delete with confirmation, reactions, "edited"/"deleted" marks: the section
// "message updates"). Page parameters: ?nodes=ws://a,ws://b  ?rooms=a,b  ?token=JWT
// ?name=Display+Name (skips the prompt)  ?ttl=seconds (dev token lifetime).

import { ChatdClient, httpBaseFromWs, frameReadSeq } from './chatd-client.js';

const params = new URLSearchParams(location.search);
const list = (v) => (v || '').split(',').map((s) => s.trim()).filter(Boolean);
const defaultNode = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
const NODES = list(params.get('nodes')).length ? list(params.get('nodes')) : [defaultNode];
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const INITIAL_ROOMS = (list(params.get('rooms')).length ? list(params.get('rooms')) : ['general', 'random'])
  .filter((r) => ROOM_RE.test(r));
const PAGE = 50;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'datetime') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c) e.append(c);
  return e;
};

const ui = {
  status: $('status'), me: $('me'), roomList: $('room-list'), logs: $('logs'), title: $('room-title'),
  typing: $('typing'), composer: $('composer'), input: $('composer-input'), send: $('send'),
  presence: $('presence-list'), peopleCount: $('people-count'), joinForm: $('join-form'),
  joinInput: $('join-input'), login: $('login'), loginForm: $('login-form'), loginName: $('login-name'),
  loginError: $('login-error'), roomsToggle: $('rooms-toggle'), peopleToggle: $('people-toggle'),
  roomsPanel: $('rooms'), peoplePanel: $('people'),
};

let client = null;
let me = { user: null, name: '' };
let active = null;
const rooms = new Map(); // name -> room view state

// ---- sign-in -------------------------------------------------------------------------------
async function devToken(name) {
  const q = new URLSearchParams({ name });
  if (params.get('ttl')) q.set('ttl', params.get('ttl'));
  // the serving node first, then the others (a killed node must not stop a refresh)
  const bases = [location.origin, ...NODES.map(httpBaseFromWs)].filter((b, i, a) => a.indexOf(b) === i);
  let lastErr = null;
  for (const base of bases) {
    try {
      const res = await fetch(`${base}/dev/token?${q}`, { cache: 'no-store' });
      if (res.status === 404) throw Object.assign(new Error('dev tokens are off on this server; open the page with ?token=<JWT>'), { fatal: true });
      if (!res.ok) throw new Error(`dev token: HTTP ${res.status}`);
      const j = await res.json();
      if (j.user) me.user = j.user;
      return j.token;
    } catch (e) {
      lastErr = e;
      if (e.fatal) break;
    }
  }
  throw lastErr;
}

function askName() {
  return new Promise((resolve) => {
    ui.loginName.value = localStorage.getItem('chatd.name') || '';
    ui.login.showModal();
    ui.loginName.focus();
    ui.loginForm.addEventListener('submit', async function onSubmit(ev) {
      ev.preventDefault();
      const name = ui.loginName.value.trim();
      if (!name) return;
      ui.loginError.textContent = '';
      try {
        const token = await devToken(name);
        localStorage.setItem('chatd.name', name);
        ui.loginForm.removeEventListener('submit', onSubmit);
        ui.login.close();
        resolve({ name, token });
      } catch (e) {
        ui.loginError.textContent = e.message || String(e);
      }
    });
    ui.login.addEventListener('cancel', (ev) => ev.preventDefault()); // a name is required
  });
}

// ---- room view state -----------------------------------------------------------------------
function roomView(name) {
  let r = rooms.get(name);
  if (r) return r;
  const log = el('div', { class: 'log', role: 'log', 'aria-label': `Messages in #${name}`, tabIndex: 0, hidden: true });
  const older = el('button', { class: 'load-older', type: 'button', text: 'Load older messages' });
  const start = el('p', { class: 'log-start', text: `This is the beginning of #${name}.`, hidden: true });
  const ol = el('ol', { class: 'messages' });
  const pendingOl = el('ol', { class: 'messages pending' });
  log.append(older, start, ol, pendingOl);
  ui.logs.append(log);
  const btn = el('button', { class: 'room', type: 'button', 'data-room': name },
    el('span', { class: 'room-name', text: `#${name}` }), el('span', { class: 'badge', hidden: true }));
  const leave = el('button', { class: 'leave', type: 'button', 'aria-label': `Leave #${name}`, title: 'Leave', text: '×' });
  const li = el('li', { 'data-room': name }, btn, leave);
  ui.roomList.append(li);
  r = {
    name, log, older, start, ol, pendingOl, li, btn,
    bySeq: new Map(),          // seq -> li
    byId: new Map(),           // own client id -> li (pending or not)
    acked: new Map(),          // id -> seq, acks that came before the message
    cursor: undefined,         // next_cursor of the oldest page loaded (null: no more)
    initialLoaded: false, loading: null, unread: 0,
    presence: new Map(),       // user -> name
    typing: new Map(),         // user -> {name, timer}
    updateSeqs: new Set(),     // seqs of message updates seen (not messages: no list entry)
    early: new Map(),          // target seq -> live updates of a message not shown yet
  };
  rooms.set(name, r);
  btn.addEventListener('click', () => switchRoom(name, { focus: true }));
  leave.addEventListener('click', () => leaveRoom(name));
  older.addEventListener('click', () => loadOlder(r));
  log.addEventListener('scroll', () => {
    if (log.scrollTop < 120 && r.initialLoaded) loadOlder(r);
  }, { passive: true });
  watchScrollForRead(r);
  return r;
}

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

function scrollToBottom(log) {
  log.scrollTop = log.scrollHeight;
}

function fmtTime(ts) {
  const d = new Date(Number(ts) || Date.now());
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const STATE_TEXT = { pending: 'sending…', sent: 'sent', acked: 'delivered', failed: 'not sent' };

function setMsgState(li, state, detail) {
  li.dataset.state = state;
  const s = li.querySelector('.state');
  if (!s) return;
  s.textContent = state === 'acked' ? '✓' : state === 'failed' ? '!' : state === 'sent' ? '·' : '…';
  s.setAttribute('aria-label', detail ? `${STATE_TEXT[state]}: ${detail}` : STATE_TEXT[state]);
  s.title = s.getAttribute('aria-label');
}

function messageEl(m, own) {
  const li = el('li', { class: own ? 'msg own' : 'msg', 'data-user': m.user || '' });
  if (m.seq !== undefined && m.seq !== null) li.dataset.seq = String(m.seq);
  if (m.id) li.dataset.id = m.id;
  const meta = el('div', { class: 'meta' },
    el('span', { class: 'author', text: m.name || m.user || '?' }),
    el('time', { datetime: new Date(Number(m.ts) || Date.now()).toISOString(), text: fmtTime(m.ts) }));
  if (own) meta.append(el('span', { class: 'state', role: 'img' }));
  li.append(meta, el('div', { class: 'body', text: typeof m.body === 'string' ? m.body : '' }));
  updatesDecorate(li, m, own);
  return li;
}

// Inserts a stored message (with seq) at its place; returns false when it is already shown.
function insertMessage(r, m) {
  const seq = Number(m.seq);
  if (r.bySeq.has(seq)) return false;
  const own = !!(me.user && m.user === me.user);
  // ids are per sender: another user's message with my pending id is not mine
  let li = own && m.id ? r.byId.get(m.id) : null;
  if (li && li.dataset.seq) li = null; // the id is already placed at another seq (never expected)
  if (li) {
    li.remove(); // the pending copy becomes the stored one
    li.dataset.seq = String(seq);
    const t = li.querySelector('time');
    if (t && m.ts) { t.dateTime = new Date(Number(m.ts)).toISOString(); t.textContent = fmtTime(m.ts); }
    setMsgState(li, li.dataset.state === 'acked' || r.acked.has(m.id) ? 'acked' : 'sent');
  } else {
    li = messageEl(m, own);
    if (own) setMsgState(li, m.fromHistory || r.acked.has(m.id) ? 'acked' : 'sent');
    if (own && m.id) r.byId.set(m.id, li);
  }
  r.bySeq.set(seq, li);
  updatesPlaced(r, li, m);
  // usually the newest: walk back from the end to find the place
  let after = r.ol.lastElementChild;
  while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
  if (after) after.after(li);
  else r.ol.prepend(li);
  return true;
}

// ---- history ------------------------------------------------------------------------------
// The first page is fetched once the client knows where the live stream starts for the room
// (welcome / presence_state), so that history + live leave no hole between them.
async function loadInitial(r, { force = false } = {}) {
  if (r.initialLoaded || r.loading) return r.loading;
  if (!force && client.lastSeq(r.name) === null) return undefined; // presence_state will call again
  r.loading = (async () => {
    try {
      const res = await client.history(r.name, { limit: PAGE });
      const stick = atBottom(r.log) || r.bySeq.size === 0;
      for (const m of res.messages || []) insertMessage(r, { ...m, fromHistory: true });
      r.pageTop = Math.max(0, ...(res.messages || []).map((m) => Number(m.seq) || 0));
      r.cursor = res.next_cursor ?? null;
      r.initialLoaded = true;
      if (stick) scrollToBottom(r.log);
    } catch (e) {
      r.older.textContent = `Could not load history (${e.message}). Retry`;
      r.loading = null;
      return;
    }
    r.loading = null;
    updateOlder(r);
    fillViewport(r);
    fillHoles(r);
    readAfterLoad(r);
  })();
  return r.loading;
}

// Postgres may lag a moment behind the live stream: a message broadcast (its seq given) but
// not committed when the first page was read is neither in that page nor in the live stream,
// which starts after the head the client got in welcome / presence_state. Every seq from the
// newest message of the first page up to the client's last seq must be known (a message, or an
// update seen live); while one is missing, the page is fetched again, a few times. A missing seq
// may also be an update made before the join (history lists messages only): then the refetches
// find nothing and stop, at most 5 small requests.
async function fillHoles(r) {
  for (let t = 0; t < 5; t++) {
    const last = Number(client.lastSeq(r.name)) || 0;
    const from = Math.max(r.pageTop || 0, last - 200); // one refetch (limit 200) covers the range
    let hole = false;
    for (let q = from + 1; q <= last && !hole; q++) hole = !r.bySeq.has(q) && !r.updateSeqs.has(q);
    if (!hole || !rooms.has(r.name)) return;
    await new Promise((res) => setTimeout(res, 300 * (t + 1)));
    try {
      const res = await client.history(r.name, { limit: 200 });
      for (const m of res.messages || []) insertMessage(r, { ...m, fromHistory: true });
    } catch { /* try again */ }
  }
}

async function loadOlder(r) {
  if (!r.initialLoaded) return loadInitial(r);
  if (r.loading || r.cursor === null) return r.loading;
  r.loading = (async () => {
    r.older.textContent = 'Loading…';
    r.log.setAttribute('aria-busy', 'true');
    try {
      const res = await client.history(r.name, { before: r.cursor, limit: PAGE });
      const oldHeight = r.log.scrollHeight;
      const oldTop = r.log.scrollTop;
      for (const m of res.messages || []) insertMessage(r, { ...m, fromHistory: true });
      r.cursor = res.next_cursor ?? null;
      // keep what the reader was looking at in place
      r.log.scrollTop = oldTop + (r.log.scrollHeight - oldHeight);
    } catch (e) {
      r.older.textContent = `Could not load older messages (${e.message}). Retry`;
      r.loading = null;
      r.log.removeAttribute('aria-busy');
      return;
    }
    r.loading = null;
    r.log.removeAttribute('aria-busy');
    updateOlder(r);
    fillViewport(r);
  })();
  return r.loading;
}

function updateOlder(r) {
  const done = r.cursor === null;
  r.older.hidden = done;
  r.older.textContent = 'Load older messages';
  r.start.hidden = !done;
}

// infinite scroll: while the log does not overflow, there is nothing to scroll: load more
function fillViewport(r) {
  if (r.name !== active || r.cursor === null || r.log.hidden) return;
  if (r.log.scrollHeight <= r.log.clientHeight + 120) setTimeout(() => loadOlder(r), 0);
}

// ---- rooms ----------------------------------------------------------------------------------
function switchRoom(name, { focus = false } = {}) {
  const r = roomView(name);
  for (const x of rooms.values()) {
    x.log.hidden = x !== r;
    if (x === r) x.btn.setAttribute('aria-current', 'page');
    else x.btn.removeAttribute('aria-current');
  }
  const prev = active;
  active = name;
  readOnSwitch(prev, r);
  ui.title.textContent = `#${name}`;
  ui.input.placeholder = `Message #${name}`;
  renderPresence();
  renderTyping();
  const url = new URL(location.href);
  url.hash = name;
  history.replaceState(null, '', url);
  closePanels();
  if (!r.initialLoaded) {
    Promise.resolve(loadInitial(r)).then(() => {
      if (r.initialLoaded) scrollToBottom(r.log);
      readAfterLoad(r);
    });
  } else {
    fillViewport(r);
    readAfterLoad(r);
  }
  if (focus) ui.input.focus();
}

function joinRoom(name, { activate = true } = {}) {
  if (!ROOM_RE.test(name)) return false;
  roomView(name);
  client.join(name);
  if (activate) switchRoom(name, { focus: true });
  return true;
}

function leaveRoom(name) {
  const r = rooms.get(name);
  if (!r || rooms.size <= 1) return; // keep at least one room
  client.leave(name);
  for (const t of r.typing.values()) clearTimeout(t.timer);
  r.log.remove();
  r.li.remove();
  rooms.delete(name);
  if (active === name) switchRoom(rooms.keys().next().value, { focus: true });
}

// ---- read state: unread badges, the "new messages" divider, "seen by" ----------------------
// Per room (r.rs): `server`, the room's entry of GET /rooms/unread ({seq, read_seq, unread}:
// exact, the same on every device); `live`, the seqs of other people's messages that arrived
// since; `seen`, other users' read positions from read receipts (user -> {name, seq});
// `dividerAfter`, the read seq when the room was opened (the divider stays put while the
// room is open). The badge is server.unread plus the live messages above server.seq, while
// the server's answer is for the read seq the client holds; otherwise the live messages above
// the read seq until the next answer. `read` goes out (client.markRead) for the last message
// on screen while the room is open, the page visible and focused.
function rsOf(r) {
  if (!r.rs) r.rs = { server: null, live: new Set(), seen: new Map(), dividerAfter: null };
  return r.rs;
}

function unreadCount(r) {
  const rs = rsOf(r);
  const readSeq = client.readSeq(r.name) ?? 0;
  const srv = rs.server && rs.server.read_seq === readSeq ? rs.server : null;
  const base = srv ? Math.max(srv.seq, readSeq) : readSeq;
  let n = srv ? srv.unread : 0;
  for (const seq of rs.live) if (seq > base) n++;
  return n;
}

function updateBadge(r) {
  r.unread = r.name === active ? 0 : unreadCount(r);
  renderBadge(r);
}

let unreadTimer = null;
// GET /rooms/unread (debounced): exact counts for every room with a read state
function refreshUnread(delay = 200) {
  clearTimeout(unreadTimer);
  unreadTimer = setTimeout(async () => {
    let res;
    try { res = await client.unread(); } catch { return; }
    for (const e of (res && res.rooms) || []) {
      const r = rooms.get(e.room);
      if (!r) continue;
      const rs = rsOf(r);
      rs.server = e;
      for (const seq of [...rs.live]) if (seq <= e.seq) rs.live.delete(seq);
      updateBadge(r);
    }
  }, delay);
}

function lookingAt(r) {
  return r && r.name === active && !r.log.hidden && document.visibilityState === 'visible' && document.hasFocus();
}

// The newest message whose top is inside the log's visible area.
function lastVisibleSeq(r) {
  const box = r.log.getBoundingClientRect();
  for (let li = r.ol.lastElementChild; li; li = li.previousElementSibling) {
    if (!li.dataset.seq) continue;
    const b = li.getBoundingClientRect();
    if (b.top < box.bottom - 4 && b.bottom > box.top) return Number(li.dataset.seq);
    if (b.bottom <= box.top) return null;
  }
  return null;
}

function markSeen(r) {
  if (!lookingAt(r) || !r.initialLoaded) return;
  const seq = lastVisibleSeq(r);
  if (seq) client.markRead(r.name, seq);
}

function readOnMessage(r, m) {
  if (m.user !== me.user) rsOf(r).live.add(Number(m.seq));
  updateBadge(r);
  if (r.name === active) {
    renderDivider(r);
    renderSeenBy(r);
    markSeen(r);
  }
}

function readOnSwitch(prev, r) {
  const p = prev && rooms.get(prev);
  if (p && p !== r) {
    rsOf(p).dividerAfter = null;
    renderDivider(p);
    updateBadge(p);
  }
  if (p !== r) rsOf(r).dividerAfter = client.readSeq(r.name);
  updateBadge(r);
}

function readAfterLoad(r) {
  if (r.name !== active) return;
  renderDivider(r);
  renderSeenBy(r);
  markSeen(r);
}

// "New messages" above the first message of someone else after the read seq the room had
// when it was opened.
function renderDivider(r) {
  const old = r.ol.querySelector('.new-divider');
  const after = rsOf(r).dividerAfter;
  let target = null;
  if (after !== null && after !== undefined && r.name === active) {
    for (const li of r.ol.children) {
      if (Number(li.dataset.seq) > after && li.dataset.user !== me.user) { target = li; break; }
    }
  }
  if (old && old.parentElement === target) return;
  if (old) old.remove();
  if (target) target.prepend(el('div', { class: 'new-divider', role: 'separator', 'aria-label': 'New messages', text: 'New messages' }));
}

// "Seen by" under the newest message other people have read (from their receipts).
function renderSeenBy(r) {
  const old = r.ol.querySelector('.seen-by');
  const rs = rsOf(r);
  let top = 0;
  for (const v of rs.seen.values()) top = Math.max(top, v.seq);
  let li = null;
  if (top > 0) {
    for (let x = r.ol.lastElementChild; x; x = x.previousElementSibling) {
      if (x.dataset.seq && Number(x.dataset.seq) <= top) { li = x; break; }
    }
  }
  if (old) old.remove();
  if (!li) return;
  const seq = Number(li.dataset.seq);
  const names = [...rs.seen.values()].filter((v) => v.seq >= seq).map((v) => v.name).sort();
  const text = `Seen by ${names.length > 3 ? `${names.slice(0, 3).join(', ')} and ${names.length - 3} more` : names.join(', ')}`;
  li.append(el('div', { class: 'seen-by', text, 'aria-label': text }));
}

function wireReadState() {
  client.on('read_state', ({ room, readSeq }) => {
    const r = rooms.get(room);
    if (!r) return;
    if (!r.joinedBefore && r.firstJoinSeq !== undefined) {
      const seq = r.firstJoinSeq;
      delete r.firstJoinSeq;
      joined({ room, read_seq: readSeq, seq });
    }
    updateBadge(r);
    refreshUnread();
  });
  client.on('read', (f) => {
    const r = rooms.get(f.room);
    if (!r || f.user === me.user) return;
    const rs = rsOf(r);
    const prev = rs.seen.get(f.user);
    if (!prev || f.seq > prev.seq) rs.seen.set(f.user, { name: f.name || f.user, seq: Number(f.seq) });
    renderSeenBy(r);
  });
  // joining a room never joined before marks what came before as read (as Slack does); rooms
  // the user looks at are marked as they are seen. Only the page's first join of the room: a
  // rejoin after a reconnect also answers read_seq 0 when the room was empty at the first
  // join, and what was said while the tab was offline is unread, not "before the join"
  // (before, a reconnect marked it read: no badge, and "seen by" told the others so).
  // read_seq 0 means "never read", not "never joined": a room joined while empty gets a read
  // state at 0 (client.startReadState), so that after a reload (or on another device) GET
  // /rooms/unread lists it and its messages stay unread; only a room that list does not name
  // is marked read at its first join (before, a reload cleared the badge of a room joined
  // empty and never opened). When the list cannot be read, nothing is marked.
  // A join answered "read_seq_pending": true (the server could not read the read state in time;
  // its read_seq 0 is a placeholder, not "never read": frameReadSeq gives null) decides nothing
  // yet: the value follows as this user's own receipt ('read_state' above), and the first-join
  // decision is taken then, with the head the join announced.
  const joined = (f) => {
    const r = rooms.get(f.room);
    if (!r) return;
    const readSeq = frameReadSeq(f);
    if (!r.joinedBefore && readSeq === null) {
      // the head of the page's first join, not of a rejoin's (a reconnect before the value
      // came): what was said between them stays unread
      if (r.firstJoinSeq === undefined) r.firstJoinSeq = f.seq;
      refreshUnread();
      return;
    }
    const first = !r.joinedBefore;
    r.joinedBefore = true;
    if (first && readSeq === 0 && f.seq === 0) client.startReadState(f.room);
    if (first && readSeq === 0 && f.seq > 0 && f.room !== active) markReadIfNeverJoined(f.room, f.seq);
    refreshUnread();
  };
  const markReadIfNeverJoined = async (room, seq) => {
    let res;
    try { res = await client.unread(); } catch { return; }
    if (!res || !Array.isArray(res.rooms) || res.rooms.some((e) => e.room === room)) return;
    if (room !== active) client.markRead(room, seq);
  };
  client.on('presence_state', joined);
  client.on('welcome', joined);
  client.on('reset', ({ room }) => { const r = rooms.get(room); if (r) { rsOf(r).live.clear(); refreshUnread(); } });
  for (const ev of ['focus', 'visibilitychange']) {
    (ev === 'focus' ? window : document).addEventListener(ev, () => markSeen(rooms.get(active)));
  }
}

// called from roomView: the log's scroll reveals messages
function watchScrollForRead(r) {
  let queued = false;
  r.log.addEventListener('scroll', () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; markSeen(r); });
  }, { passive: true });
}

function renderBadge(r) {
  const b = r.btn.querySelector('.badge');
  b.hidden = r.unread === 0;
  b.textContent = r.unread > 99 ? '99+' : String(r.unread);
  r.btn.setAttribute('aria-label', r.unread ? `#${r.name}, ${r.unread} unread` : `#${r.name}`);
}

// ---- presence and typing --------------------------------------------------------------------
function renderPresence() {
  const r = rooms.get(active);
  ui.presence.replaceChildren();
  if (!r) return;
  const users = [...r.presence.entries()].sort((a, b) => a[1].localeCompare(b[1]));
  for (const [user, name] of users) {
    const li = el('li', { 'data-user': user, class: user === me.user ? 'self' : '' },
      el('span', { class: 'dot', 'aria-hidden': 'true' }), el('span', { text: name || user }));
    if (user === me.user) li.append(el('span', { class: 'you', text: ' (you)' }));
    ui.presence.append(li);
  }
  ui.peopleCount.textContent = String(users.length);
  ui.peoplePanel.setAttribute('aria-label', `${users.length} online in #${r.name}`);
}

function renderTyping() {
  const r = rooms.get(active);
  const names = r ? [...r.typing.values()].map((t) => t.name) : [];
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  ui.typing.textContent = text;
  ui.typing.dataset.users = names.length ? String(names.length) : '';
}

function clearTyping(r, user) {
  const t = r.typing.get(user);
  if (!t) return;
  clearTimeout(t.timer);
  r.typing.delete(user);
  if (r.name === active) renderTyping();
}

// ---- connection status -----------------------------------------------------------------------
function setStatus(s) {
  ui.status.dataset.state = s.state;
  let text = 'Offline';
  if (s.state === 'connecting') text = 'Connecting…';
  else if (s.state === 'open') text = 'Online';
  else if (s.state === 'reconnecting') text = s.delayMs > 1000 ? `Reconnecting in ${Math.ceil(s.delayMs / 1000)} s…` : 'Reconnecting…';
  const node = s.state === 'open' ? (s.node || client.node || '') : '';
  ui.status.replaceChildren(el('span', { text }), node ? el('span', { class: 'node', text: ` · ${node}` }) : '');
  ui.status.title = node ? `connected to node ${node}` : text;
  const online = s.state === 'open';
  document.body.classList.toggle('offline', !online);
}

// ---- composer ---------------------------------------------------------------------------------
function sendCurrent() {
  const body = ui.input.value.trim();
  if (!body || !active) return;
  const r = rooms.get(active);
  const id = client.send(active, body);
  const li = messageEl({ id, user: me.user, name: me.name, body, ts: Date.now() }, true);
  setMsgState(li, 'pending');
  r.byId.set(id, li);
  r.pendingOl.append(li);
  ui.input.value = '';
  autosize();
  scrollToBottom(r.log);
}

function autosize() {
  ui.input.style.height = 'auto';
  const h = ui.input.scrollHeight + 2; // + borders
  ui.input.style.height = `${Math.min(h, 160)}px`;
  ui.input.style.overflowY = h > 160 ? 'auto' : 'hidden';
}

// ---- panels (narrow screens) --------------------------------------------------------------------
function togglePanel(btn, panel) {
  const open = btn.getAttribute('aria-expanded') !== 'true';
  closePanels();
  btn.setAttribute('aria-expanded', String(open));
  panel.classList.toggle('open', open);
  if (open) (panel.querySelector('button, input') || panel).focus();
}

function closePanels() {
  for (const [b, p] of [[ui.roomsToggle, ui.roomsPanel], [ui.peopleToggle, ui.peoplePanel]]) {
    b.setAttribute('aria-expanded', 'false');
    p.classList.remove('open');
  }
}

// ---- wiring -------------------------------------------------------------------------------------
function wireClient() {
  client.on('status', setStatus);
  client.on('welcome', (w) => {
    me.user = w.user;
    ui.me.textContent = me.name || w.user;
    ui.me.title = `user id ${w.user}`;
    ui.input.disabled = false;
    ui.send.disabled = false;
    for (const r of rooms.values()) {
      // own messages already shown by other means get their "own" look
      for (const li of r.ol.children) li.classList.toggle('own', li.dataset.user === me.user);
    }
  });
  client.on('message', (m) => {
    const r = rooms.get(m.room);
    if (!r) return;
    const stick = atBottom(r.log);
    if (!insertMessage(r, m)) return;
    if (m.user) clearTyping(r, m.user);
    if (stick || m.user === me.user) scrollToBottom(r.log);
    readOnMessage(r, m);
  });
  client.on('ack', (a) => {
    const r = rooms.get(a.room);
    if (!r) return;
    r.acked.set(a.id, a.seq);
    const li = r.byId.get(a.id);
    if (li) setMsgState(li, 'acked');
  });
  client.on('error', (e) => {
    if (e.id) {
      for (const r of rooms.values()) {
        const li = r.byId.get(e.id);
        if (li && e.failed && li.dataset.state !== 'acked') {
          setMsgState(li, 'failed', e.message || e.code);
        }
      }
    }
    if (e.code && e.code !== 'unavailable') console.warn('chatd:', e.code, e.message || '');
  });
  client.on('reset', ({ room }) => {
    // the client skipped a range it could not recover: reload this room's view from history
    const r = rooms.get(room);
    if (!r) return;
    r.ol.replaceChildren();
    r.bySeq.clear();
    r.updateSeqs.clear();
    r.early.clear();
    r.initialLoaded = false;
    r.cursor = undefined;
    loadInitial(r);
  });
  client.on('presence_state', (p) => {
    const r = rooms.get(p.room);
    if (!r) return;
    r.presence = new Map((p.users || []).map((u) => [u.user, u.name]));
    if (r.name === active) {
      renderPresence();
      if (!r.initialLoaded) loadInitial(r, { force: true }).then(() => scrollToBottom(r.log));
    }
  });
  client.on('presence', (p) => {
    const r = rooms.get(p.room);
    if (!r) return;
    if (p.event === 'join') r.presence.set(p.user, p.name);
    else if (p.event === 'leave') { r.presence.delete(p.user); clearTyping(r, p.user); }
    if (r.name === active) renderPresence();
  });
  client.on('typing', (t) => {
    const r = rooms.get(t.room);
    if (!r || t.user === me.user) return;
    const prev = r.typing.get(t.user);
    if (prev) clearTimeout(prev.timer);
    const ttl = Number(t.ttl_ms) > 0 ? Number(t.ttl_ms) : 5000;
    r.typing.set(t.user, { name: t.name || t.user, timer: setTimeout(() => clearTyping(r, t.user), ttl) });
    if (r.name === active) renderTyping();
  });
}

function wireUi() {
  ui.composer.addEventListener('submit', (ev) => { ev.preventDefault(); sendCurrent(); });
  ui.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendCurrent();
    }
  });
  ui.input.addEventListener('input', () => {
    autosize();
    if (active && ui.input.value.trim()) client.typing(active);
  });
  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = ui.joinInput.value.trim().replace(/^#/, '');
    if (rooms.has(name)) { switchRoom(name, { focus: true }); ui.joinInput.value = ''; return; }
    if (joinRoom(name)) ui.joinInput.value = '';
    else ui.joinInput.setCustomValidity('1-64 letters, digits, _ . -');
    ui.joinInput.reportValidity();
  });
  ui.joinInput.addEventListener('input', () => ui.joinInput.setCustomValidity(''));
  ui.roomsToggle.addEventListener('click', () => togglePanel(ui.roomsToggle, ui.roomsPanel));
  ui.peopleToggle.addEventListener('click', () => togglePanel(ui.peopleToggle, ui.peoplePanel));
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && (ui.roomsPanel.classList.contains('open') || ui.peoplePanel.classList.contains('open'))) {
      closePanels();
      ui.input.focus();
    }
  });
  window.addEventListener('online', () => client && client.reconnectNow());
}

// ---- message updates (v2): edit, delete, reactions --------------------------------------------
// Each shown message keeps its update state in li._upd: {deleted, editedTs, reactions: Map(emoji ->
// count), mine: Set(emoji)}. Live 'update' events and the current state of history messages
// ('fromHistory' / the client's 'state' event) both land here and re-render the message. Own
// messages get Edit / Delete buttons; every message a reaction bar (chips toggle your own
// reaction) and a small picker. Up-arrow in the empty composer edits your last message; in the
// editor Enter saves and Escape cancels. A delete asks for confirmation first.
const PICKER = ['👍', '❤️', '😂', '🎉', '😮', '👀'];
const reactIntents = new Map(); // react id -> {room, target, emoji, on, flipped}

function updState(li) {
  if (!li._upd) li._upd = { deleted: false, editedTs: 0, reactions: new Map(), mine: new Set() };
  return li._upd;
}

function updatesDecorate(li, m, own) {
  const st = updState(li);
  const mark = el('span', { class: 'edited', text: '(edited)', hidden: true });
  li.querySelector('.meta').append(mark);
  const bar = el('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' });
  const add = el('button', { class: 'react-add', type: 'button', text: '☺+', title: 'Add a reaction',
    'aria-label': 'Add a reaction', 'aria-haspopup': 'true', 'aria-expanded': 'false' });
  const picker = el('div', { class: 'picker', role: 'group', 'aria-label': 'Pick a reaction', hidden: true });
  for (const e of PICKER) {
    picker.append(el('button', { type: 'button', class: 'pick', text: e, 'aria-label': `React with ${e}`, 'data-emoji': e }));
  }
  const actions = el('div', { class: 'actions' }, add);
  if (own) {
    actions.append(el('button', { class: 'edit', type: 'button', text: 'Edit', 'aria-label': 'Edit message' }),
      el('button', { class: 'delete', type: 'button', text: 'Delete', 'aria-label': 'Delete message' }));
  }
  li.append(bar, actions, picker);
  if (m.fromHistory) applyHistoryState(li, m);
  renderUpdates(li);
  return st;
}

function renderUpdates(li) {
  const st = updState(li);
  li.classList.toggle('deleted', st.deleted);
  const body = li.querySelector('.body');
  if (st.deleted && body) body.textContent = 'This message was deleted.';
  const mark = li.querySelector('.edited');
  if (mark) {
    mark.hidden = !st.editedTs || st.deleted;
    if (st.editedTs) mark.title = `edited ${new Date(Number(st.editedTs)).toLocaleString()}`;
  }
  const bar = li.querySelector('.reactions');
  if (bar) {
    bar.replaceChildren();
    if (!st.deleted) {
      for (const [emoji, count] of st.reactions) {
        if (count <= 0) continue;
        const mine = st.mine.has(emoji);
        bar.append(el('button', { type: 'button', class: mine ? 'chip mine' : 'chip', 'data-emoji': emoji,
          'aria-pressed': String(mine), 'aria-label': `${emoji} ${count}${mine ? ', you reacted' : ''}`,
          text: `${emoji} ${count}` }));
      }
    }
    bar.hidden = bar.childElementCount === 0;
  }
  const actions = li.querySelector('.actions');
  if (actions) actions.hidden = st.deleted || !li.dataset.seq;
  if (st.deleted) closePicker(li);
}

// The current state a history page gives (edited_ts, deleted, reactions).
function applyHistoryState(li, m) {
  const st = updState(li);
  if (m.deleted) st.deleted = true;
  if (m.edited_ts) st.editedTs = m.edited_ts;
  if (m.reactions && typeof m.reactions === 'object') {
    st.reactions = new Map(Object.entries(m.reactions).map(([e, c]) => [e, Number(c)]));
  }
  if (!m.deleted && typeof m.body === 'string') {
    const b = li.querySelector('.body');
    if (b && !li.classList.contains('editing')) b.textContent = m.body;
  }
}

function applyUpdate(li, u) {
  const st = updState(li);
  if (u.kind === 'edit') {
    st.editedTs = u.ts;
    const b = li.querySelector('.body');
    if (b && typeof u.body === 'string' && !st.deleted && !li.classList.contains('editing')) b.textContent = u.body;
  } else if (u.kind === 'delete') {
    st.deleted = true;
    stopEditing(li, false);
  } else if (u.kind === 'react') {
    st.reactions.set(u.emoji, Number(u.count));
    if (u.user === me.user) (u.on ? st.mine.add(u.emoji) : st.mine.delete(u.emoji));
  }
  renderUpdates(li);
}

// A message was placed in the list: live updates that came before it apply now.
function updatesPlaced(r, li, m) {
  // a replayed message deleted since comes as history shows it (deleted, no body)
  if ((m.fromHistory || m.deleted) && li._upd) { applyHistoryState(li, m); renderUpdates(li); }
  const early = r.early.get(Number(m.seq));
  if (early) {
    r.early.delete(Number(m.seq));
    for (const u of early) applyUpdate(li, u);
  }
  renderUpdates(li);
}

function onUpdate(u) {
  const r = rooms.get(u.room);
  if (!r) return;
  r.updateSeqs.add(Number(u.seq));
  // a deleted message is no longer unread (the server's count leaves it out too)
  if (u.kind === 'delete' && r.rs && r.rs.live.delete(Number(u.target))) updateBadge(r);
  const li = r.bySeq.get(Number(u.target));
  if (li) applyUpdate(li, u);
  else {
    // its message is not shown (yet): history will bring it in its current state; keep the
    // update to apply on top (bounded)
    const list = r.early.get(Number(u.target)) || [];
    if (list.length < 200) list.push(u);
    r.early.set(Number(u.target), list);
  }
}

function findMessage(target) {
  const li = target.closest && target.closest('li.msg');
  if (!li || !li.dataset.seq) return null;
  const log = li.closest('.log');
  const r = [...rooms.values()].find((x) => x.log === log);
  return r ? { r, li, seq: Number(li.dataset.seq) } : null;
}

function toggleReaction(r, li, emoji) {
  const st = updState(li);
  const on = !st.mine.has(emoji);
  const id = client.react(r.name, Number(li.dataset.seq), emoji, on);
  reactIntents.set(id, { room: r.name, target: Number(li.dataset.seq), emoji, on, flipped: false });
}

function openPicker(li) {
  const p = li.querySelector('.picker');
  const b = li.querySelector('.react-add');
  if (!p || updState(li).deleted) return;
  p.hidden = false;
  b.setAttribute('aria-expanded', 'true');
  p.querySelector('button').focus();
}

function closePicker(li, focusBack = false) {
  const p = li.querySelector('.picker');
  const b = li.querySelector('.react-add');
  if (!p || p.hidden) return;
  p.hidden = true;
  b.setAttribute('aria-expanded', 'false');
  if (focusBack) b.focus();
}

function startEditing(r, li) {
  const st = updState(li);
  if (st.deleted || li.classList.contains('editing') || !li.dataset.seq) return;
  const body = li.querySelector('.body');
  const ta = el('textarea', { class: 'edit-input', rows: 2, 'aria-label': 'Edit message (Enter saves, Escape cancels)' });
  ta.value = body.textContent;
  li.classList.add('editing');
  body.hidden = true;
  body.after(ta);
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
  ta.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); stopEditing(li, true); }
    else if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      const text = ta.value.trim();
      if (text && text !== body.textContent) {
        client.editMessage(r.name, Number(li.dataset.seq), text);
        body.textContent = text; // shown now; the update frame confirms it
      }
      stopEditing(li, true);
    }
  });
}

function stopEditing(li, focusComposer) {
  if (!li.classList.contains('editing')) return;
  const ta = li.querySelector('.edit-input');
  if (ta) ta.remove();
  li.querySelector('.body').hidden = false;
  li.classList.remove('editing');
  if (focusComposer) ui.input.focus();
}

function confirmDelete(r, li) {
  if (updState(li).deleted) return;
  // a native confirm: modal, keyboard- and screen-reader-accessible
  if (!window.confirm('Delete this message for everyone?')) return;
  client.deleteMessage(r.name, Number(li.dataset.seq));
}

// Up-arrow in the empty composer: your last message in the active room (as in Slack).
function editLast() {
  const r = rooms.get(active);
  if (!r) return false;
  const own = [...r.ol.querySelectorAll('li.msg.own')].filter((li) => li.dataset.seq && !updState(li).deleted);
  const li = own[own.length - 1];
  if (!li) return false;
  li.scrollIntoView({ block: 'nearest' });
  startEditing(r, li);
  return true;
}

function wireUpdates() {
  client.on('update', onUpdate);
  client.on('state', (m) => {
    const r = rooms.get(m.room);
    const li = r && r.bySeq.get(Number(m.seq));
    if (li) { applyHistoryState(li, m); renderUpdates(li); }
  });
  client.on('error', (e) => {
    const intent = e.id && reactIntents.get(e.id);
    if (!intent) return;
    reactIntents.delete(e.id);
    // a reaction we did not know was ours (history gives counts only) or already gone:
    // the server says it changes nothing, so the user meant the other direction
    if (e.code === 'rejected' && !intent.flipped) {
      const id = client.react(intent.room, intent.target, intent.emoji, !intent.on);
      reactIntents.set(id, { ...intent, on: !intent.on, flipped: true });
    }
  });
  client.on('ack', (a) => reactIntents.delete(a.id));
  ui.logs.addEventListener('click', (ev) => {
    const t = ev.target;
    if (!(t instanceof HTMLElement) || t.tagName !== 'BUTTON') return;
    const f = findMessage(t);
    if (!f) return;
    if (t.classList.contains('chip')) toggleReaction(f.r, f.li, t.dataset.emoji);
    else if (t.classList.contains('pick')) { toggleReaction(f.r, f.li, t.dataset.emoji); closePicker(f.li, true); }
    else if (t.classList.contains('react-add')) {
      if (f.li.querySelector('.picker').hidden) openPicker(f.li); else closePicker(f.li);
    } else if (t.classList.contains('edit')) startEditing(f.r, f.li);
    else if (t.classList.contains('delete')) confirmDelete(f.r, f.li);
  });
  ui.logs.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape') return;
    const li = ev.target.closest && ev.target.closest('li.msg');
    if (li && !li.querySelector('.picker').hidden) { ev.preventDefault(); closePicker(li, true); }
  });
  ui.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowUp' && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey &&
        ui.input.value === '' && editLast()) ev.preventDefault();
  });
}

async function main() {
  wireUi();
  let tokenProvider;
  const fixed = params.get('token');
  if (fixed) {
    tokenProvider = async () => fixed;
    me.name = params.get('name') || '';
  } else {
    let first;
    const preset = (params.get('name') || '').trim();
    if (preset) {
      try {
        first = { name: preset, token: await devToken(preset) };
      } catch (e) {
        ui.status.textContent = e.message;
        return;
      }
    } else {
      first = await askName();
    }
    me.name = first.name;
    let pending = first.token;
    tokenProvider = async () => {
      if (pending) { const t = pending; pending = null; return t; }
      return devToken(me.name);
    };
  }
  ui.me.textContent = me.name;
  autosize();
  const hashRoom = decodeURIComponent(location.hash.slice(1));
  const initial = [...INITIAL_ROOMS];
  if (ROOM_RE.test(hashRoom) && !initial.includes(hashRoom)) initial.push(hashRoom);
  if (initial.length === 0) initial.push('general');
  client = new ChatdClient({ urls: NODES, tokenProvider, rooms: initial });
  window.chatd = { client, rooms, me }; // for debugging and the browser tests
  wireClient();
  wireReadState();
  wireUpdates();
  for (const name of initial) roomView(name);
  switchRoom(ROOM_RE.test(hashRoom) ? hashRoom : initial[0]);
  client.connect();
}

main();
