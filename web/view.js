/**
 * Drawing the conversation and the online list. Every text that came from the network is set
 * with `textContent`, never parsed as HTML.
 *
 * @module
 */

/** Creates an element with a class and, optionally, its text. */
export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** Fills a `<time>` element from an ISO time (time only if today, else with the date). */
function setTime(node, iso) {
  const date = new Date(iso);
  if (typeof iso !== "string" || Number.isNaN(date.getTime())) {
    node.textContent = "";
    return;
  }
  node.dateTime = iso;
  node.title = FULL.format(date);
  const today = new Date().toDateString() === date.toDateString();
  node.textContent = (today ? TIME : DATE_TIME).format(date);
}

/** What a pending message's state says, for everyone (sighted and screen reader users). */
const STATE_TEXT = {
  queued: "sending…",
  sent: "sending…",
  waiting: "waiting to resend…",
  failed: "not sent",
};

/**
 * A message `<li>`: `{ id, ts, sender, ip, content, own, state, error }`. Own messages carry a
 * visible "you" mark; pending ones their state.
 */
export function messageItem(message) {
  const item = element("li", "msg");
  const meta = element("p", "meta");
  meta.append(element("span", "name", message.sender));
  const you = element("span", "you", "you");
  meta.append(you);
  meta.append(element("span", "ip", message.ip ?? ""));
  meta.append(element("time", "ts"));
  meta.append(element("span", "state"));
  item.append(meta, element("p", "text", message.content));
  updateMessage(item, message);
  return item;
}

/** Updates the parts of a message item that change: id, time, own, state. */
export function updateMessage(item, message) {
  item.dataset.order = String(message.id ?? Infinity);
  if (message.id !== undefined) item.dataset.id = String(message.id);
  item.classList.toggle("own", Boolean(message.own));
  item.querySelector(".you").hidden = !message.own;
  const ip = item.querySelector(".ip");
  ip.hidden = !message.ip;
  if (message.ip) ip.textContent = message.ip;
  const time = item.querySelector(".ts");
  if (message.ts) setTime(time, message.ts);
  time.hidden = !message.ts;
  const state = item.querySelector(".state");
  const pending = message.state !== undefined && message.state !== "acked";
  item.classList.toggle("pending", pending);
  item.classList.toggle("failed", message.state === "failed");
  state.hidden = !pending;
  if (pending) {
    const text = STATE_TEXT[message.state] ?? "sending…";
    state.textContent = message.error ? `${text}: ${message.error}` : text;
  }
}

/**
 * Puts `item` into the list `list`, ordered by `data-order` (message id; pending ones last, in
 * the order they were sent). Returns whether it went in above the last item (an older message).
 */
export function insertOrdered(list, item) {
  const order = Number(item.dataset.order);
  let before = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (Number(node.dataset.order) <= order) break;
    before = node;
  }
  list.insertBefore(item, before);
  return before !== null;
}

/** Draws the online list, the user first, then by name. */
export function renderMembers(list, members, selfId) {
  const sorted = [...members.values()].sort((a, b) => {
    if (a.id === selfId) return -1;
    if (b.id === selfId) return 1;
    return a.name.localeCompare(b.name) || a.id - b.id;
  });
  const items = sorted.map((member) => {
    const item = element("li", member.id === selfId ? "member self" : "member");
    item.dataset.id = String(member.id);
    item.append(element("span", "dot"));
    item.append(element("span", "name", member.name));
    if (member.id === selfId) item.append(element("span", "you", "you"));
    item.append(element("span", "ip", member.ip));
    return item;
  });
  list.replaceChildren(...items);
}
