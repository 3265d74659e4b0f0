/**
 * The browser chat client: login, the conversation, who is online, and the message box.
 *
 * The password is kept only in `sessionStorage` (for reconnects and reloads in this tab), never
 * in `localStorage` or the URL. Messages not yet acked and the unsent draft are kept there too,
 * so a reload or a lost connection loses nothing typed.
 *
 * @module
 */

import { ChatLink, count, errorText } from "./link.js";
import { MemberParts } from "./members.js";
import { element, insertOrdered, messageItem, renderMembers, updateMessage } from "./view.js";

/** Messages asked for per "older" page. */
const PAGE = 50;
/** Newest own message ids remembered (to mark them as yours after a reload). */
const OWN_KEEP = 500;
/** Announcements kept in the live region. */
const ANNOUNCE_KEEP = 5;

const $ = (id) => document.getElementById(id);
const ui = {
  loginView: $("login-view"),
  loginForm: $("login-form"),
  loginName: $("login-name"),
  loginPassword: $("login-password"),
  loginButton: $("login-button"),
  loginError: $("login-error"),
  chatView: $("chat-view"),
  status: $("status"),
  logout: $("logout"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  retry: $("retry"),
  scroller: $("log"),
  older: $("older"),
  start: $("log-start"),
  messages: $("messages"),
  composer: $("composer"),
  box: $("message"),
  send: $("send"),
  composerError: $("composer-error"),
  online: $("online"),
  onlineCount: $("online-count"),
  announcer: $("announcer"),
};

/** A Web Storage area that never throws (private modes may refuse it; then nothing is kept). */
function store(area) {
  return {
    get(key) {
      try {
        return area().getItem(key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        if (value === null) area().removeItem(key);
        else area().setItem(key, value);
      } catch {
        // Not kept; this tab still works.
      }
    },
    json(key, fallback) {
      try {
        return JSON.parse(this.get(key) ?? "null") ?? fallback;
      } catch {
        return fallback;
      }
    },
  };
}

/** This tab's: the password, the name, unacked messages, the draft, own message ids. */
const session = store(() => sessionStorage);
/** Only the last name used, to fill in the login form. */
const local = store(() => localStorage);

const state = {
  /** @type {ChatLink | undefined} */
  link: undefined,
  name: "",
  /** Message ids drawn (no duplicates: a message is drawn once, whichever way it came). */
  seen: new Set(),
  minId: undefined,
  maxId: undefined,
  /** Ids of this tab's own messages. */
  own: new Set(session.json("chat.own", [])),
  /** Pending message items by ref. */
  pendingItems: new Map(),
  members: new Map(),
  /** The member list being received in parts (welcome, then `who` frames). */
  memberParts: new MemberParts(),
  selfId: undefined,
  selfIp: undefined,
  /** What each `history_end` to come closes, in order: "replay", "older" or "newer". */
  expect: [],
  /** Whether the replay of the current connection asked for messages after an id. */
  gapFill: false,
  moreOlder: false,
  loadingOlder: false,
  /** Whether the first replay has been drawn (then the view starts at the bottom). */
  loaded: false,
  errorTimer: 0,
  /** Whether the view was at the bottom when last scrolled (it then stays there). */
  stick: true,
};

// ---- login -------------------------------------------------------------------------------

function showLogin(message) {
  ui.chatView.hidden = true;
  ui.loginView.hidden = false;
  ui.loginButton.disabled = false;
  ui.loginButton.textContent = "Join";
  ui.loginError.hidden = !message;
  ui.loginError.textContent = message ?? "";
  if (!ui.loginName.value) ui.loginName.value = local.get("chat.name") ?? "";
  (ui.loginName.value ? ui.loginPassword : ui.loginName).focus();
}

function showChat() {
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;
  ui.box.value = session.get("chat.draft") ?? ui.box.value;
  fitBox();
  ui.box.focus();
}

ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.loginName.value.trim();
  const password = ui.loginPassword.value;
  if (!name || !password) return;
  ui.loginButton.disabled = true;
  ui.loginButton.textContent = "Joining…";
  ui.loginError.hidden = true;
  login(name, password, false);
});

ui.logout.addEventListener("click", () => {
  const unsent = state.pendingItems.size;
  if (unsent > 0) {
    const what = unsent === 1 ? "1 message is" : `${unsent} messages are`;
    if (!confirm(`${what} not sent yet and will be lost. Leave anyway?`)) return;
  }
  state.link?.close();
  state.link = undefined;
  for (const key of ["password", "name", "pending", "own", "draft"]) {
    session.set(`chat.${key}`, null);
  }
  location.reload();
});

/** Starts a link; `retry` when the credentials are known to be good (a reload of this tab). */
function login(name, password, retry) {
  state.link?.close();
  state.name = name;
  const url = new URL("/ws", location.href);
  url.protocol = "wss:";
  const pending = state.pendingItems.size > 0
    ? [...state.pendingItems.values()]
      .filter(({ message }) => message.state !== "failed")
      .map(({ message }) => ({ ref: message.ref, content: message.content }))
    : session.json("chat.pending", []);
  const link = new ChatLink({
    url: url.href,
    name,
    password,
    lastId: state.maxId,
    pending,
    retry,
  }, {
    onState: (what, detail) => onState(link, what, detail, password),
    onFrame: (frame) => link === state.link && onFrame(frame),
    onAck: (item, id, ts) => link === state.link && onAck(item, id, ts),
    onPending: (item) => link === state.link && drawPending(item),
  });
  state.link = link;
  for (const item of link.pending.values()) drawPending(item);
  link.start();
}

function onState(link, what, detail, password) {
  if (link !== state.link) return;
  if (what === "online") {
    session.set("chat.password", password);
    session.set("chat.name", state.name);
    local.set("chat.name", state.name);
    ui.status.textContent = `Signed in as ${state.name}`;
    ui.chatView.classList.remove("offline");
    setBanner(undefined);
    if (ui.chatView.hidden) showChat();
  } else if (what === "reconnecting") {
    const seconds = Math.max(1, Math.round(detail.delayMs / 1000));
    ui.status.textContent = "Offline";
    ui.chatView.classList.add("offline");
    setBanner(`Reconnecting… (${detail.reason}; next try in ${seconds} s)`, true);
  } else if (what === "connecting" && !ui.chatView.hidden && !link.online) {
    if (link.everLoggedIn || !ui.banner.hidden) setBanner("Reconnecting…", false);
  } else if (what === "failed") {
    state.link = undefined;
    if (detail.code === "auth_failed" || detail.code === "locked_out") {
      session.set("chat.password", null);
      ui.loginPassword.value = "";
    }
    setBanner(undefined);
    showLogin(detail.message);
  }
}

function setBanner(text, retry) {
  ui.banner.hidden = text === undefined;
  ui.bannerText.textContent = text ?? "";
  ui.retry.hidden = !retry;
}

ui.retry.addEventListener("click", () => state.link?.retryNow());
addEventListener("online", () => state.link?.retryNow());

// ---- frames ------------------------------------------------------------------------------

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      return onWelcome(frame);
    case "message":
      return onMessage(frame);
    case "history_end":
      return onHistoryEnd(frame);
    case "joined":
      return onJoined(frame.member);
    case "left":
      return onLeft(frame.member);
    case "who":
      return setMembers(state.memberParts.add(frame));
    case "error":
      // Errors about one message show on it; the link resends after `rate_limited`.
      if (typeof frame.ref !== "string" && frame.code !== "rate_limited") {
        showError(errorText(frame));
      }
      return;
  }
}

function onWelcome(frame) {
  const self = parseMember(frame.member);
  state.selfId = self?.id;
  state.selfIp = self?.ip;
  // The whole list, or its first part (the rest follows in `who` frames).
  setMembers(state.memberParts.add(frame));
  state.gapFill = state.link?.after !== undefined;
  state.expect = ["replay"];
  state.loadingOlder = false;
}

function onMessage(frame) {
  const id = count(frame.id);
  if (id !== undefined) {
    if (state.seen.has(id)) return;
    state.seen.add(id);
    state.minId = Math.min(state.minId ?? id, id);
    state.maxId = Math.max(state.maxId ?? id, id);
  }
  const message = {
    id,
    ts: frame.ts,
    sender: typeof frame.sender === "string" ? frame.sender : "anon",
    ip: typeof frame.sender_ip === "string" ? frame.sender_ip : "",
    content: typeof frame.content === "string" ? frame.content : "",
    own: id !== undefined && state.own.has(id),
  };
  const item = messageItem(message);
  place(item, { older: state.expect[0] === "older" });
  if (frame.replay !== true) announce(`${message.sender}: ${message.content}`);
}

function onHistoryEnd(frame) {
  const kind = state.expect.shift();
  const more = frame.more === true;
  if (kind === "replay") {
    if (!state.gapFill) setMoreOlder(more);
    if (state.gapFill && more) requestNewer();
    if (state.gapFill && count(frame.count)) {
      const n = frame.count;
      announce(`${n} ${n === 1 ? "message" : "messages"} arrived while you were offline`);
    }
    if (!state.loaded) {
      state.loaded = true;
      drawStart();
      scrollToBottom();
    }
  } else if (kind === "older") {
    state.loadingOlder = false;
    setMoreOlder(more);
  } else if (kind === "newer" && more) {
    requestNewer();
  }
}

function requestNewer() {
  if (state.maxId === undefined) return;
  if (state.link?.request({ type: "history", after: state.maxId, limit: 200 })) {
    state.expect.push("newer");
  }
}

function onAck(pending, id, ts) {
  state.own.add(id);
  session.set("chat.own", JSON.stringify([...state.own].slice(-OWN_KEEP)));
  const drawn = state.pendingItems.get(pending.ref);
  state.pendingItems.delete(pending.ref);
  savePending();
  if (state.seen.has(id)) {
    // Already drawn from a replay (the ack of the first try was lost with its connection).
    drawn?.item.remove();
    const existing = ui.messages.querySelector(`li[data-id="${id}"]`);
    if (existing) {
      existing.classList.add("own");
      existing.querySelector(".you").hidden = false;
    }
    return;
  }
  state.seen.add(id);
  state.minId = Math.min(state.minId ?? id, id);
  state.maxId = Math.max(state.maxId ?? id, id);
  if (!drawn) return;
  const message = { ...drawn.message, id, ts, ip: state.selfIp, state: "acked" };
  drawn.item.remove();
  updateMessage(drawn.item, message);
  place(drawn.item, { older: false });
}

/** Draws (or redraws) a pending message of the link. */
function drawPending(pending) {
  let drawn = state.pendingItems.get(pending.ref);
  const message = {
    ref: pending.ref,
    content: pending.content,
    sender: state.name,
    ip: state.selfIp,
    own: true,
    state: pending.state,
    error: pending.error,
  };
  if (!drawn) {
    drawn = { message, item: messageItem(message) };
    state.pendingItems.set(pending.ref, drawn);
    savePending();
    place(drawn.item, { older: false, own: true });
  } else {
    drawn.message = message;
    updateMessage(drawn.item, message);
  }
}

function savePending() {
  const list = [...state.pendingItems.values()]
    .filter(({ message }) => message.state !== "failed")
    .map(({ message }) => ({ ref: message.ref, content: message.content }));
  session.set("chat.pending", list.length ? JSON.stringify(list) : null);
}

// ---- presence ----------------------------------------------------------------------------

function parseMember(value) {
  if (typeof value !== "object" || value === null || typeof value.name !== "string") {
    return undefined;
  }
  const id = count(value.id);
  if (id === undefined) return undefined;
  return { id, name: value.name, ip: typeof value.ip === "string" ? value.ip : "" };
}

function setMembers(list) {
  if (!Array.isArray(list)) return;
  state.members.clear();
  for (const value of list) {
    const member = parseMember(value);
    if (member) state.members.set(member.id, member);
  }
  drawMembers();
}

function onJoined(value) {
  const member = parseMember(value);
  if (!member || state.members.has(member.id)) return;
  state.members.set(member.id, member);
  drawMembers();
  announce(`${member.name} joined`);
}

function onLeft(value) {
  const member = parseMember(value);
  if (!member || !state.members.delete(member.id)) return;
  drawMembers();
  announce(`${member.name} left`);
}

function drawMembers() {
  renderMembers(ui.online, state.members, state.selfId);
  ui.onlineCount.textContent = String(state.members.size);
}

// ---- the conversation --------------------------------------------------------------------

/** Whether the view is (nearly) at the bottom. */
function atBottom() {
  const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
  return scrollHeight - scrollTop - clientHeight < 48;
}

function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

/**
 * Inserts a message item in id order. Older messages keep the view where it was; new ones
 * follow the bottom if the view was there (and always for the user's own).
 */
function place(item, { older, own }) {
  const follow = own || atBottom();
  const height = ui.scroller.scrollHeight;
  const above = insertOrdered(ui.messages, item);
  if (older || (above && !follow)) {
    ui.scroller.scrollTop += ui.scroller.scrollHeight - height;
  } else if (follow) {
    scrollToBottom();
  }
  drawStart();
}

function setMoreOlder(more) {
  state.moreOlder = more;
  drawStart();
}

/** The top of the conversation: a button for older messages, or where it starts. */
function drawStart() {
  ui.older.hidden = !state.moreOlder;
  const empty = ui.messages.childElementCount === 0;
  ui.start.hidden = state.moreOlder || !state.loaded;
  ui.start.textContent = empty ? "No messages yet. Say hello!" : "Start of the conversation";
}

function loadOlder() {
  if (!state.moreOlder || state.loadingOlder || state.minId === undefined) return;
  if (!state.link?.request({ type: "history", before: state.minId, limit: PAGE })) return;
  state.loadingOlder = true;
  state.expect.push("older");
}

ui.older.addEventListener("click", loadOlder);
ui.scroller.addEventListener("scroll", () => {
  state.stick = atBottom();
  if (ui.scroller.scrollTop < 80) loadOlder();
}, { passive: true });
// When the view shrinks (the message box grows, a banner shows), keep the newest in sight.
new ResizeObserver(() => state.stick && scrollToBottom()).observe(ui.scroller);

function announce(text) {
  const line = text.length > 300 ? `${text.slice(0, 300)}…` : text;
  ui.announcer.append(element("p", "", line));
  while (ui.announcer.childElementCount > ANNOUNCE_KEEP) ui.announcer.firstElementChild.remove();
}

function showError(text) {
  ui.composerError.textContent = text;
  ui.composerError.hidden = false;
  clearTimeout(state.errorTimer);
  state.errorTimer = setTimeout(() => ui.composerError.hidden = true, 8_000);
}

// ---- the message box ---------------------------------------------------------------------

function fitBox() {
  const lines = ui.box.value.split("\n").length;
  ui.box.rows = Math.min(Math.max(lines, 1), 6);
}

function sendTyped() {
  const content = ui.box.value;
  if (content.trim() === "" || !state.link) return;
  try {
    drawPending(state.link.send(content));
  } catch (error) {
    showError(error.message);
    return;
  }
  ui.box.value = "";
  session.set("chat.draft", null);
  fitBox();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendTyped();
  ui.box.focus();
});
ui.box.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  sendTyped();
});
ui.box.addEventListener("input", () => {
  session.set("chat.draft", ui.box.value || null);
  fitBox();
});

// ---- start -------------------------------------------------------------------------------

{
  const name = session.get("chat.name");
  const password = session.get("chat.password");
  if (name && password) {
    ui.status.textContent = "Connecting…";
    showChat();
    login(name, password, true);
  } else {
    showLogin(undefined);
  }
}
