/**
 * One chat connection over the server's WebSocket (`/ws`) that stays logged in.
 *
 * Each WebSocket text message is one JSON frame body of the TLS protocol. The link logs in with
 * the version 2 features (ids, presence, history), keeps every message it sends pending (by its
 * `ref`) until the server acks it, paces itself to the server's token bucket, and after a lost
 * connection reconnects with jittered exponential backoff, asks for the messages it missed
 * (`after`) and resends every unacked message with its original `ref` (the server drops copies
 * it already took). It stops for good only on a refused login (wrong password, locked out).
 *
 * Plain browser JavaScript, no DOM: the page (app.js) draws what it reports.
 *
 * @module
 */

/** First reconnect delay, milliseconds. */
export const BACKOFF_INITIAL_MS = 500;
/** Longest reconnect delay, milliseconds. */
export const BACKOFF_MAX_MS = 10_000;
/** First delay before resending a message the server could not take now, milliseconds. */
const RESEND_INITIAL_MS = 1_000;
/** Longest delay between resends of one message, milliseconds. */
const RESEND_MAX_MS = 10_000;
/** A connection that is not logged in after this long is closed and tried again. */
const LOGIN_TIMEOUT_MS = 15_000;
/** The server's frame limit until its `welcome` says otherwise (PROTOCOL.md). */
const DEFAULT_MAX_FRAME = 65_536;
/** Messages replayed at the first login. */
export const HISTORY = 50;
/** What the page asks for. */
const FEATURES = ["ids", "presence", "history"];
/** Errors before login after which retrying cannot help. */
const FATAL_CODES = new Set(["locked_out"]);

/** UTF-8 length of a string. */
function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** A non-negative safe integer, or `undefined`. */
export function count(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/**
 * Keeps sending within the server's token bucket (`welcome.limits`). It uses half the burst,
 * leaving the rest for network jitter that bunches frames up.
 */
class Pacer {
  constructor(limits) {
    this.rate = count(limits?.rate) ?? 0;
    this.capacity = Math.max(1, Math.floor((count(limits?.burst) ?? 1) / 2));
    this.tokens = this.capacity;
    this.at = performance.now();
  }

  /** Takes a token and returns 0, or returns the milliseconds to wait before asking again. */
  take() {
    if (this.rate === 0) return 0;
    const now = performance.now();
    this.tokens = Math.min(this.capacity, this.tokens + (now - this.at) * this.rate / 1000);
    this.at = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - this.tokens) * 1000 / this.rate);
  }
}

/**
 * A chat link. Events (all optional):
 * - `onFrame(frame)`: every frame received after login, in order (welcome, messages, acks, ...);
 * - `onState(state, detail)`: `"connecting"`, `"online"`, `"reconnecting"` (detail: `{ delayMs,
 *   reason }`) or `"failed"` (detail: `{ message, code }`; the link has stopped);
 * - `onAck(item, id, ts)`: a pending message was accepted and stored;
 * - `onPending(item)`: a pending message changed state (`queued`, `sent`, `waiting`, `failed`).
 */
export class ChatLink {
  /**
   * @param {object} options `url` of the WebSocket, `name`, `password`, `lastId` (largest message
   *   id already shown, for gap fill), `pending` ([{ref, content}] not yet acked), `retry` (keep
   *   trying when the very first connection fails; otherwise that is reported as `failed`)
   * @param {object} events see the class description
   */
  constructor(options, events) {
    this.url = options.url;
    this.name = options.name;
    this.password = options.password;
    this.lastId = options.lastId;
    this.retry = options.retry ?? false;
    this.events = events;
    /** Messages not yet acked, in the order they were sent, by ref. */
    this.pending = new Map();
    for (const { ref, content } of options.pending ?? []) {
      this.pending.set(ref, { ref, content, state: "queued", attempts: 0 });
    }
    /** Requests (history, who) waiting for a token; dropped when the connection is lost. */
    this.requests = [];
    this.ws = undefined;
    /** The `after` of the last login, if it asked for the messages after an id. */
    this.after = undefined;
    this.loggedIn = false;
    this.everLoggedIn = false;
    this.stopped = false;
    this.maxFrame = DEFAULT_MAX_FRAME;
    this.pacer = new Pacer(undefined);
    this.delay = BACKOFF_INITIAL_MS;
    /** `rate_limited` answers since the last ack, for the resend backoff. */
    this.rateAttempts = 0;
    this.timers = { reconnect: 0, login: 0, pump: 0, rate: 0 };
  }

  /** Opens the first connection. */
  start() {
    this.#connect();
  }

  /** Whether the link is logged in right now. */
  get online() {
    return this.loggedIn && this.ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Queues a message; it goes out now or after the next login, and stays pending until acked.
   *
   * @throws {RangeError} if the message is too large for the server (it could never be sent)
   */
  send(content) {
    const ref = crypto.randomUUID();
    const size = byteLength(JSON.stringify({ type: "message", content, ref }));
    if (size > this.maxFrame) {
      throw new RangeError(
        `This message is too long: ${size} bytes, the server takes at most ${this.maxFrame}`,
      );
    }
    const item = { ref, content, state: "queued", attempts: 0 };
    this.pending.set(ref, item);
    this.#pump();
    return item;
  }

  /** Sends a request (history page, who) when a token is free; dropped if the link is lost. */
  request(frame) {
    if (!this.online) return false;
    this.requests.push(frame);
    this.#pump();
    return true;
  }

  /** Reconnects now instead of waiting out the backoff (e.g. the network came back). */
  retryNow() {
    if (this.stopped || this.ws !== undefined) return;
    clearTimeout(this.timers.reconnect);
    this.#connect();
  }

  /** Stops for good and closes the connection. */
  close() {
    this.stopped = true;
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    for (const item of this.pending.values()) clearTimeout(item.timer);
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000, "bye");
  }

  #connect() {
    if (this.stopped) return;
    this.events.onState?.("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this.#fail(`Cannot open the connection: ${error.message}`, "connect");
      return;
    }
    this.ws = ws;
    this.loggedIn = false;
    let opened = false;
    let authed = false;
    let closeError;
    this.timers.login = setTimeout(() => ws.close(), LOGIN_TIMEOUT_MS);
    ws.addEventListener("open", () => {
      opened = true;
      const auth = {
        type: "auth",
        password: this.password,
        name: this.name,
        features: FEATURES,
        history: HISTORY,
      };
      // On a reconnect: every message after the last one seen, so no gap is left.
      this.after = this.lastId;
      if (this.after !== undefined) auth.after = this.after;
      ws.send(JSON.stringify(auth));
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (typeof frame !== "object" || frame === null || Array.isArray(frame)) return;
      if (frame.type === "auth_result") {
        if (frame.success === true) authed = true;
        else {
          const text = typeof frame.error === "string" ? frame.error : "Login refused";
          this.#fail(text, "auth_failed");
        }
        return;
      }
      if (!authed) {
        if (frame.type === "error") {
          closeError = frame;
          if (FATAL_CODES.has(frame.code)) this.#fail(errorText(frame), frame.code);
        }
        return;
      }
      this.#onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.loggedIn = false;
      clearTimeout(this.timers.login);
      clearTimeout(this.timers.pump);
      this.timers.pump = 0;
      this.requests = [];
      for (const item of this.pending.values()) {
        if (item.state === "sent") this.#setState(item, "queued");
      }
      if (this.stopped) return;
      const reason = closeError
        ? errorText(closeError)
        : opened
        ? closeReason(event)
        : "the server cannot be reached";
      if (!this.everLoggedIn && !this.retry) {
        this.#fail(`Cannot log in: ${reason}`, closeError?.code ?? "connect");
        return;
      }
      const delayMs = Math.round(this.delay * (0.75 + Math.random() * 0.5));
      this.delay = Math.min(this.delay * 2, BACKOFF_MAX_MS);
      this.events.onState?.("reconnecting", { delayMs, reason });
      this.timers.reconnect = setTimeout(() => this.#connect(), delayMs);
    });
  }

  #fail(message, code) {
    const ws = this.ws;
    this.close();
    ws?.close();
    this.events.onState?.("failed", { message, code });
  }

  #onFrame(frame) {
    if (frame.type === "welcome") this.#onWelcome(frame);
    else if (frame.type === "message") {
      const id = count(frame.id);
      if (id !== undefined) this.lastId = Math.max(this.lastId ?? id, id);
    } else if (frame.type === "ack" && typeof frame.ref === "string") {
      this.#onAck(frame);
    } else if (frame.type === "error" && typeof frame.ref === "string") {
      this.#onRefError(frame);
    } else if (frame.type === "error" && frame.code === "rate_limited") {
      this.#resendSentSoon();
    }
    this.events.onFrame?.(frame);
  }

  #onWelcome(frame) {
    clearTimeout(this.timers.login);
    this.loggedIn = true;
    this.everLoggedIn = true;
    this.delay = BACKOFF_INITIAL_MS;
    this.maxFrame = count(frame.limits?.max_frame) ?? DEFAULT_MAX_FRAME;
    this.pacer = new Pacer(frame.limits);
    this.events.onState?.("online");
    // Everything unacked goes (again) in the order it was sent; the server drops known refs.
    for (const item of this.pending.values()) {
      clearTimeout(item.timer);
      if (item.state !== "failed") this.#setState(item, "queued");
    }
    // Sent after the welcome frame's own handlers (the page draws the replay first).
    queueMicrotask(() => this.#pump());
  }

  #onAck(frame) {
    const item = this.pending.get(frame.ref);
    const id = count(frame.id);
    if (!item || id === undefined) return;
    clearTimeout(item.timer);
    this.pending.delete(item.ref);
    this.rateAttempts = 0;
    item.state = "acked";
    this.events.onAck?.(item, id, typeof frame.ts === "string" ? frame.ts : undefined);
  }

  #onRefError(frame) {
    const item = this.pending.get(frame.ref);
    if (!item) return;
    if (frame.code === "invalid_message") {
      item.error = errorText(frame);
      this.#setState(item, "failed");
      return;
    }
    // `unavailable` (or another "not now" about this message): send it again later.
    const delayMs = Math.min(RESEND_INITIAL_MS * 2 ** item.attempts, RESEND_MAX_MS);
    item.attempts++;
    this.#setState(item, "waiting");
    clearTimeout(item.timer);
    item.timer = setTimeout(() => {
      if (item.state !== "waiting") return;
      this.#setState(item, "queued");
      this.#pump();
    }, delayMs);
  }

  /** `rate_limited` does not say which frame was dropped: resend every unacked one shortly. */
  #resendSentSoon() {
    if (this.timers.rate) return;
    // Backs off while the server keeps refusing; an ack shows it takes messages again.
    const delayMs = Math.min(RESEND_INITIAL_MS * 2 ** this.rateAttempts, RESEND_MAX_MS);
    this.rateAttempts++;
    this.timers.rate = setTimeout(() => {
      this.timers.rate = 0;
      for (const item of this.pending.values()) {
        if (item.state === "sent") this.#setState(item, "queued");
      }
      this.#pump();
    }, delayMs);
  }

  #setState(item, state) {
    if (item.state === state) return;
    item.state = state;
    this.events.onPending?.(item);
  }

  #pump() {
    if (!this.online || this.timers.pump) return;
    const ws = this.ws;
    while (true) {
      const request = this.requests[0];
      const item = request ? undefined : this.#nextQueued();
      if (!request && !item) return;
      const wait = this.pacer.take();
      if (wait > 0) {
        this.timers.pump = setTimeout(() => {
          this.timers.pump = 0;
          this.#pump();
        }, wait);
        return;
      }
      if (request) {
        this.requests.shift();
        ws.send(JSON.stringify(request));
      } else {
        ws.send(JSON.stringify({ type: "message", content: item.content, ref: item.ref }));
        this.#setState(item, "sent");
      }
    }
  }

  #nextQueued() {
    for (const item of this.pending.values()) if (item.state === "queued") return item;
    return undefined;
  }
}

/** What an error frame says, for a person. */
export function errorText(frame) {
  if (typeof frame.error === "string" && frame.error !== "") return frame.error;
  return typeof frame.code === "string" ? frame.code : "Unknown error";
}

function closeReason(event) {
  if (event.reason) return event.reason;
  return event.code === 1006 ? "the connection was lost" : `the connection closed (${event.code})`;
}
