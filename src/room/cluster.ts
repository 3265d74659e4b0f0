/**
 * The cluster room: one room served by every server started with the same `--redis` URL. It is
 * the second implementation of {@link Room}; sessions do not know which one they talk to.
 *
 * **Where things live in Redis** (every key starts with the prefix, `chat:` by default):
 * - `messages`: a stream, the room's one order and its history. A node posts its messages in
 *   batches, one script call each and one batch in flight at a time (so each sender's order
 *   holds whatever Redis answers; batches grow with the load). The script numbers them from `seq` (so ids strictly increase
 *   across nodes and restarts), records each `ref` for ten minutes (`ref:<ref>`, for
 *   de-duplication) and appends them with their id as the entry id (`<id>-0`). The entry time
 *   is Redis's clock, one clock for the cluster.
 * - Every node reads the stream (`XREAD BLOCK`, a batch per read) and delivers each message to
 *   its own members through the same {@link Fanout} as the single-node room. While one of its
 *   recipients is full, a node stops reading: the stream waits for it, nothing is skipped.
 * - `cursors`: how far each node has read. Posting waits (flow control) while a reading node is
 *   about to fall off the stream's trimmed end.
 * - `presence`: a stream of joins and leaves; `members:<node>`: a hash of each node's members;
 *   `nodes`: the set of live node numbers; `node:<n>`: a node's heartbeat key, which expires
 *   when the node stops refreshing it. A node whose key has expired is reaped by the first node
 *   that notices: its members leave with `node_lost` (one script, so exactly once).
 * - `fails:<addr>` / `lock:<addr>`: the login lockout, shared by every node.
 *
 * **When Redis is unreachable** nothing crashes and nobody is dropped: messages are refused at
 * once with `unavailable` (the client resends them with their `ref`), presence changes wait in a
 * queue, and everything resumes by itself once Redis answers again (the client reconnects every
 * half second at most).
 *
 * @module
 */
import { setImmediate } from "node:timers";
import type { Logger } from "@logtape/logtape";
import { createClient } from "@redis/client";
import {
  encodeAck,
  encodeHistoryEnd,
  encodeJoined,
  encodeLeft,
  type LeaveReason,
  MAX_REPLAY,
  type MemberInfo,
  WANTS_HISTORY,
  WANTS_IDS,
} from "../protocol/mod.ts";
import { encodePage, Fanout } from "./fanout.ts";
import { MemberList } from "./members.ts";
import type {
  ClusterStatus,
  HistoryQuery,
  JoinRequest,
  Mailbox,
  Post,
  Room,
  RoomMember,
  RoomStats,
} from "./room.ts";
import type { StoredMessage } from "./store.ts";

/**
 * A lockout table shared by several servers (see {@link RedisRoom.lockout}), by lockout key (an
 * IPv4 address, or an IPv6 /64).
 */
export interface SharedLockout {
  /** Whether `key` is locked out; `false` when the shared table cannot be asked. */
  isLocked(key: string): Promise<boolean>;
  /** Records a failed login from `key`; whether it is now locked out (`false` when unreachable). */
  fail(key: string): Promise<boolean>;
}

/** Options of {@link RedisRoom}. */
export interface RedisRoomOptions {
  /** `redis://[[user]:password@]host[:port][/db]` or `rediss://…` (TLS). */
  url: string;
  /** Messages kept in history (`--history-keep`). */
  keep: number;
  /** Most bytes of history sent in one replay or page (at least one message always goes). */
  replayBytes: number;
  /** A recipient's queue is full: pause the senders. */
  hold(mailbox: Mailbox): void;
  /** `mailbox` is not full any more (flow control resumes the senders once nothing holds). */
  release(mailbox: Mailbox): void;
  /** Recipients (and other holders, such as this room's backlog) holding the senders back. */
  holders(): number;
  /**
   * Calls `resume` once nothing holds the senders back any more (at once if nothing does);
   * returns a function that cancels the wait.
   */
  whenFree(resume: () => void): () => void;
  /** Called after frames were queued (to write them out now). */
  delivered?: () => void;
  /** Lockout rules (`--max-auth-failures`, `--lockout`). */
  lockout: { maxFailures: number; windowMs: number };
  logger: Logger;
  /** Key prefix (default `chat:`). */
  prefix?: string;
  /** Heartbeat period, ms (default 1000); a node is lost after `nodeTtlMs` (default 8000). */
  heartbeatMs?: number;
  nodeTtlMs?: number;
}

/** How long a command may take before the node treats Redis as unreachable for it. */
const COMMAND_TIMEOUT_MS = 3000;
/** `XREAD BLOCK` time; the reader also wakes this often when the room is quiet. */
const READ_BLOCK_MS = 1000;
/** Most entries taken from a stream in one read. */
const READ_COUNT = 256;
/** Most messages numbered and appended in one script call, and most bytes of their text. */
const MAX_BATCH = 256;
const MAX_BATCH_BYTES = 1024 * 1024;
/**
 * Bytes of message text waiting for Redis's answer above which this node's senders are paused
 * (flow control, as for a full recipient); at twice this, messages are refused (`unavailable`).
 */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/** Most commands queued on one connection (node-redis's own queue is unbounded otherwise). */
const MAX_QUEUED_COMMANDS = 4096;
/** How often (at most) a node tells the others how far it has read. */
const CURSOR_EVERY_MS = 100;
/** How long a `ref` is remembered for de-duplication. */
const REF_TTL_MS = 10 * 60 * 1000;
/** Fewest stream entries kept whatever `--history-keep` is: they carry the live delivery. */
const MIN_STREAM_LENGTH = 10_000;
/** Entries kept in the presence stream. */
const PRESENCE_LENGTH = 100_000;
/** Node numbers are below this; a member id is `node * 2**32 + n`, a safe integer. */
const NODE_LIMIT = 2 ** 21;
const MEMBER_SPACE = 2 ** 32;
/** Posts wait while a live node is within this many entries of the stream's trimmed end. */
const LAG_MARGIN = 2000;
/** How often a batch that waits for a lagging node is tried again, and for how long at most. */
const LAG_RETRY_MS = 50;
const LAG_WAIT_MS = 5000;
/** A reader that has completed no read for this long (not paused by flow control) is stuck. */
const READER_STUCK_MS = READ_BLOCK_MS + 4000;

const UNAVAILABLE = "Cannot store the message now; resend it later";

/** Numbers, de-duplicates and appends a batch of messages. */
const POST_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ts = string.format('%.0f', now)
-- A counter started afresh starts from the clock (ms x 1000), above every id given before.
local clock = now * 1000
local seq = redis.call('GET', KEYS[1])
local restarted = redis.call('GET', ARGV[1] .. 'restarted')
if seq then seq = tonumber(seq) else
  seq = clock
  restarted = true
end
local cursor = tonumber(ARGV[5])
if seq < cursor then
  -- Redis came back with older data than this node has seen: start again from the clock.
  seq = math.max(clock, cursor)
  restarted = true
end
-- A node that is reading but has read so little that the stream is about to be trimmed past it
-- would miss messages: wait for it (its members are paused, or dropped if they do not read). A
-- node whose reader has said nothing for 10 s is not waited for: one sick node must not stop
-- the room (should it miss messages, it drops its members, who catch up from history).
local len = redis.call('XLEN', KEYS[2])
if len >= tonumber(ARGV[6]) then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if first then
    local oldest = tonumber(string.match(first[1], '^(%d+)'))
    for _, c in ipairs(redis.call('HVALS', KEYS[3])) do
      local read, at = string.match(c, '^(%d+):(%d+)$')
      if read and tonumber(read) > 0 and now - tonumber(at) < 10000 and
        tonumber(read) - oldest < tonumber(ARGV[7]) then
        return redis.error_reply('LAGGING a node is catching up')
      end
    end
  end
end
local out = {}
for i = 8, #ARGV, 5 do
  local ref = ARGV[i + 4]
  local known = false
  if ref ~= '' then known = redis.call('GET', ARGV[1] .. 'ref:' .. ref) end
  if known then
    out[#out + 1] = known
  else
    seq = seq + 1
    local id = string.format('%.0f', seq)
    if restarted then
      -- Readers see the jump of the counter as such, not as messages they missed.
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'm', ARGV[i],
        's', ARGV[i + 1], 'i', ARGV[i + 2], 'c', ARGV[i + 3], 'r', ref, 't', ts, 'k', '1')
      redis.call('DEL', ARGV[1] .. 'restarted')
      restarted = false
    else
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'm', ARGV[i],
        's', ARGV[i + 1], 'i', ARGV[i + 2], 'c', ARGV[i + 3], 'r', ref, 't', ts)
    end
    if ref ~= '' then redis.call('SET', ARGV[1] .. 'ref:' .. ref, id .. ':' .. ts, 'PX', ARGV[3]) end
    out[#out + 1] = id .. ':' .. ts .. ':new'
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', seq))
return out
`;

/**
 * Claims (ARGV[5] = '1': only if free) or renews this node's key, and writes its members afresh,
 * each announced as joined (other nodes ignore a join of a member they know).
 */
const REGISTER_SCRIPT = `
local nodeKey = ARGV[1] .. 'node:' .. ARGV[2]
if ARGV[5] == '1' then
  if not redis.call('SET', nodeKey, '1', 'PX', ARGV[3], 'NX') then return 0 end
else
  redis.call('SET', nodeKey, '1', 'PX', ARGV[3])
end
redis.call('SADD', KEYS[1], ARGV[2])
local h = ARGV[1] .. 'members:' .. ARGV[2]
redis.call('DEL', h)
for i = 7, #ARGV, 2 do
  redis.call('HSET', h, ARGV[i], ARGV[i + 1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', 'j', 'm', ARGV[i + 1])
end
return 1
`;

/**
 * Renews this node's key (0 if it had expired: the node must register again); starts the id counter again from the clock if Redis came back with older data
 * than this node has seen; reaps nodes whose key expired (their members leave with node_lost),
 * unless asked not to (a node that has just reconnected lets the others register first); returns
 * the live nodes and the history length.
 */
const HEARTBEAT_SCRIPT = `
local alive = 1
if not redis.call('SET', ARGV[1] .. 'node:' .. ARGV[2], '1', 'PX', ARGV[3], 'XX') then alive = 0 end
local cursor = tonumber(ARGV[6])
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
if seq > 0 and seq < cursor then
  local t = redis.call('TIME')
  local clock = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) * 1000
  redis.call('SET', KEYS[4], string.format('%.0f', math.max(clock, cursor)))
  redis.call('SET', ARGV[1] .. 'restarted', '1')
end
local live = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. n) == 1 then
    live[#live + 1] = n
  elseif alive == 1 and ARGV[5] == '1' then
    local h = ARGV[1] .. 'members:' .. n
    local members = redis.call('HVALS', h)
    for i = 1, #members do
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', 'l', 'w', 'node_lost', 'm', members[i])
    end
    redis.call('DEL', h)
    redis.call('SREM', KEYS[1], n)
    redis.call('HDEL', KEYS[5], n)
  else
    live[#live + 1] = n
  end
end
-- Cursors of nodes that are gone.
for _, n in ipairs(redis.call('HKEYS', KEYS[5])) do
  if redis.call('SISMEMBER', KEYS[1], n) == 0 then redis.call('HDEL', KEYS[5], n) end
end
-- The oldest message that is still history, when --history-keep is less than the stream holds
-- (ids are not consecutive across a restart of the counter: count entries, not ids).
local floor = '0'
local keep = tonumber(ARGV[7])
if keep > 0 then
  local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', keep + 1)
  if #newest == keep + 1 then floor = string.match(newest[keep + 1][1], '^(%d+)') end
end
return {alive, redis.call('XLEN', KEYS[3]), live, floor}
`;

/** Publishes this node's joins and leaves, in order. */
const PRESENCE_SCRIPT = `
local h = ARGV[1] .. 'members:' .. ARGV[2]
for i = 4, #ARGV, 4 do
  if ARGV[i] == 'j' then
    redis.call('HSET', h, ARGV[i + 1], ARGV[i + 2])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', 'j', 'm', ARGV[i + 2])
  else
    redis.call('HDEL', h, ARGV[i + 1])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', 'l', 'w', ARGV[i + 3], 'm', ARGV[i + 2])
  end
end
return 1
`;

/** Every member of the other nodes, and the presence stream's last entry id, at one instant. */
const SNAPSHOT_SCRIPT = `
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if last[1] then out[1] = last[1][1] end
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if n ~= ARGV[2] then
    local members = redis.call('HVALS', ARGV[1] .. 'members:' .. n)
    for i = 1, #members do out[#out + 1] = members[i] end
  end
end
return out
`;

/** This node leaves: its members leave with 'shutdown', its keys go. */
const GOODBYE_SCRIPT = `
local h = ARGV[1] .. 'members:' .. ARGV[2]
local members = redis.call('HVALS', h)
for i = 1, #members do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', 'l', 'w', 'shutdown', 'm', members[i])
end
redis.call('DEL', h, ARGV[1] .. 'node:' .. ARGV[2])
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`;

/** Records how far a node has read, stamped with Redis's clock. */
const CURSOR_SCRIPT = `
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1],
  ARGV[2] .. ':' .. string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return 1
`;

/** Counts a failed login in the window; locks the address out at the limit. */
const FAIL_SCRIPT = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`;

interface Script {
  source: string;
  sha: string;
}

async function script(source: string): Promise<Script> {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(source));
  const sha = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return { source, sha };
}

/** A member of another node, as this node knows it. */
interface RemoteMember extends MemberInfo {
  node: number;
  /** `performance.now()` when this node learnt of it. */
  seen: number;
}

interface Pending {
  member: RoomMember;
  post: Post;
  /** What it costs in flight (its text, about). */
  bytes: number;
}

/** A presence change of a member of this node, not yet in Redis. */
interface PresenceChange {
  op: "j" | "l";
  member: MemberInfo;
  reason?: LeaveReason;
  /** Order of the change on this node. */
  seq: number;
}

type Reply = unknown;
// deno-lint-ignore no-explicit-any
type Client = any;

/** The URL without its credentials, for logs. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = "";
    parsed.password = "";
    return parsed.toString();
  } catch {
    return "(an invalid URL)";
  }
}

/** A room shared through Redis by every server with the same URL. */
export class RedisRoom implements Room {
  #options: RedisRoomOptions;
  #logger: Logger;
  #prefix: string;
  #fanout: Fanout;
  #delivered: () => void;
  #keys: {
    seq: string;
    messages: string;
    presence: string;
    nodes: string;
    cursors: string;
  };
  #streamLength: number;
  #nodeTtl: number;
  /** Posts and history reads. */
  #commands: Client;
  /** Heartbeat, presence, lockout: never queued behind large posts. */
  #control: Client;
  /** The blocking stream reads. */
  #reader: Client;
  #scripts: Record<string, Script> | null = null;
  #scriptsLoaded = false;
  #node = 1 + Math.floor(Math.random() * (NODE_LIMIT - 1));
  #registered = false;
  #nextMemberId = 0;
  #remote = new Map<number, RemoteMember>();
  /** The same members, encoded for member lists (in the same order). */
  #remoteList = new MemberList();
  /** Id of the last message delivered here (0: none yet); the next read starts after it. */
  #cursor = 0;
  /** Where this node started reading, once known (a replay for an early member waits for it). */
  #start: Promise<number> | null = null;
  #cursorKnown = false;
  #cursorSent = 0;
  #presenceCursor: string | null = null;
  #pending: Pending[] = [];
  #pendingBytes = 0;
  #scheduled = false;
  #inFlight = 0;
  #inFlightBytes = 0;
  /** Holds the senders while too much waits for Redis (a holder of flow control, like a full recipient). */
  #backlog: Mailbox = { push: () => false, pushList: () => false, full: true };
  #backlogHeld = false;
  #lagLogged = -Infinity;
  /** A batch waits for a node that is catching up with the stream. */
  #lagging = false;
  /** The reader has not completed a read for too long (see #beat): messages are refused. */
  #readerStuck = false;
  /** When the reader last completed a read, or began or ended a wait for flow control. */
  #readerOkAt = 0;
  /** Oldest message id that is still history (exclusive bound; 0: the whole stream). */
  #historyFloor = 0;
  /** The reader's one waiter in flow control. */
  #readerWaiter: { cancel: () => void } | null = null;
  #cursorTimer: ReturnType<typeof setTimeout> | undefined;
  /** Acks of messages this node has not delivered yet: sent once it has (stream order). */
  #acks: { member: RoomMember; frame: Uint8Array; id: number }[] = [];
  #settled: (() => void) | null = null;
  #presenceQueue: PresenceChange[] = [];
  #changes = 0;
  /** Changes being published now. */
  #sending = new Set<PresenceChange>();
  /** Member ids a registration in flight is writing. */
  #registering: Set<number> | null = null;
  #up = false;
  #upSince = 0;
  #everUp = false;
  #downLogged = false;
  #closing = false;
  #stopped = false;
  #nodes = 0;
  #historySize = 0;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #beating = false;
  #reading: Promise<void> | null = null;
  #wakeReader: (() => void) | null = null;
  #stats: RoomStats = { messages: 0, deliveries: 0, refused: 0, storeErrors: 0, duplicates: 0 };

  constructor(options: RedisRoomOptions) {
    this.#options = options;
    this.#logger = options.logger;
    const prefix = this.#prefix = options.prefix ?? "chat:";
    this.#keys = {
      seq: prefix + "seq",
      messages: prefix + "messages",
      presence: prefix + "presence",
      nodes: prefix + "nodes",
      cursors: prefix + "cursors",
    };
    this.#streamLength = Math.max(options.keep, MIN_STREAM_LENGTH);
    this.#nodeTtl = options.nodeTtlMs ?? 8000;
    this.#fanout = new Fanout(options.hold);
    this.#delivered = options.delivered ?? (() => {});
    const heartbeat = options.heartbeatMs ?? 1000;
    const clientOptions = {
      url: options.url,
      RESP: 2 as const,
      disableOfflineQueue: true,
      pingInterval: heartbeat,
      commandsQueueMaxLength: MAX_QUEUED_COMMANDS,
      // node-redis's own command timeout stops counting once a command is written, so it cannot
      // tell a hung Redis; #call keeps its own deadline instead (and this saves a timer per call).
      commandOptions: { timeout: 0 },
      socket: {
        connectTimeout: 2000,
        socketTimeout: READ_BLOCK_MS + COMMAND_TIMEOUT_MS,
        reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 500),
      },
    };
    this.#commands = createClient(clientOptions);
    this.#control = createClient(clientOptions);
    this.#reader = createClient(clientOptions);
    // The control connection and the heartbeat say whether Redis is up; the other two only
    // retry (the reader may sit idle while flow control pauses it).
    this.#control.on("error", (error: Error) => this.#down(error));
    for (const client of [this.#commands, this.#reader]) {
      client.on("error", (error: Error) => {
        this.#logger.debug("Redis: {reason}", { reason: reasonOf(error) });
      });
    }
    this.#control.on("ready", () => this.#beat());
    this.#reader.on("ready", () => this.#wakeReader?.());
  }

  /** Starts connecting in the background; the room works (refusing messages) until Redis answers. */
  async start(): Promise<void> {
    this.#scripts = {
      post: await script(POST_SCRIPT),
      register: await script(REGISTER_SCRIPT),
      heartbeat: await script(HEARTBEAT_SCRIPT),
      presence: await script(PRESENCE_SCRIPT),
      snapshot: await script(SNAPSHOT_SCRIPT),
      goodbye: await script(GOODBYE_SCRIPT),
      fail: await script(FAIL_SCRIPT),
      cursor: await script(CURSOR_SCRIPT),
    };
    // connect() rejects when the first attempt fails; the clients go on trying by themselves.
    this.#control.connect().catch((error: Error) => this.#down(error));
    this.#commands.connect().catch(() => {}); // their "error" events say why
    this.#reader.connect().catch(() => {});
    this.#heartbeat = setInterval(() => this.#beat(), this.#options.heartbeatMs ?? 1000);
    this.#reading = this.#readLoop();
  }

  get size(): number {
    return this.#fanout.size;
  }

  get stats(): Readonly<RoomStats> {
    return this.#stats;
  }

  get historySize(): number {
    return Math.min(this.#historySize, this.#options.keep);
  }

  get cluster(): ClusterStatus {
    return {
      node: this.#node,
      redisUp: this.#up,
      backlogHeld: this.#backlogHeld,
      nodes: this.#nodes,
      remoteMembers: this.#remote.size,
    };
  }

  /** The lockout table in Redis (each call bounded in time; `false` when unreachable). */
  readonly lockout: SharedLockout = {
    isLocked: async (key) => {
      if (!this.#up) return false;
      const reply = await this.#call(this.#control, ["EXISTS", this.#prefix + "lock:" + key], 1000)
        .catch(() => 0);
      return Number(reply) === 1;
    },
    fail: async (key) => {
      const { windowMs, maxFailures } = this.#options.lockout;
      if (!this.#up || windowMs === 0) return false;
      const reply = await this.#eval(
        this.#control,
        "fail",
        [this.#prefix + "fails:" + key, this.#prefix + "lock:" + key],
        [String(windowMs), String(maxFailures)],
        1000,
      ).catch(() => 0);
      return Number(reply) === 1;
    },
  };

  newMemberId(): number {
    return this.#node * MEMBER_SPACE + (++this.#nextMemberId % MEMBER_SPACE);
  }

  join(member: RoomMember, request: JoinRequest): void {
    const fanout = this.#fanout;
    const replay = (member.features & WANTS_HISTORY) !== 0;
    if (!fanout.add(member, replay)) return;
    fanout.welcome(member, request, [fanout.list, this.#remoteList]);
    for (const notice of request.notices ?? []) fanout.reply(member, notice);
    fanout.presence(member.id, () => encodeJoined(member));
    this.#publish({ op: "j", member, seq: ++this.#changes });
    if (replay) this.#replay(member, request);
  }

  leave(member: RoomMember, reason: LeaveReason): void {
    if (!this.#fanout.remove(member)) return;
    if (this.#closing) return; // the goodbye says it for everyone
    this.#fanout.presence(member.id, () => encodeLeft(member, reason));
    this.#publish({ op: "l", member, reason, seq: ++this.#changes });
  }

  post(member: RoomMember, post: Post): void {
    const bytes = post.content.length + post.sender.length + 100;
    const waiting = this.#inFlightBytes + this.#pendingBytes + bytes;
    if (!this.#accepting() || waiting > 2 * MAX_IN_FLIGHT_BYTES) {
      this.#stats.refused++;
      member.refused("unavailable", UNAVAILABLE, post.ref);
      return;
    }
    this.#pending.push({ member, post, bytes });
    this.#pendingBytes += bytes;
    this.#checkBacklog();
    if (!this.#scheduled && this.#inFlight === 0) {
      this.#scheduled = true;
      setImmediate(RedisRoom.#flushRoom, this);
    }
  }

  /** Whether messages can go to Redis now: it answers, and this node's reader works. */
  #accepting(): boolean {
    return this.#up && !this.#readerStuck;
  }

  /**
   * Pauses this node's senders (a holder of flow control, like a full recipient) while too much
   * waits for Redis or a node is catching up with the stream; resumes them after.
   */
  #checkBacklog(): void {
    const waiting = this.#inFlightBytes + this.#pendingBytes;
    const hold = this.#lagging || waiting > MAX_IN_FLIGHT_BYTES ||
      (this.#backlogHeld && waiting > MAX_IN_FLIGHT_BYTES / 2);
    if (hold === this.#backlogHeld || this.#stopped) return;
    this.#backlogHeld = hold;
    if (hold) this.#options.hold(this.#backlog);
    else this.#options.release(this.#backlog);
  }

  who(member: RoomMember): number {
    return this.#fanout.who(member, [this.#fanout.list, this.#remoteList]);
  }

  history(member: RoomMember, query: HistoryQuery): void {
    const limit = query.limit;
    // Only the newest --history-keep messages are history (the stream keeps more for delivery),
    // and only what this node has delivered (what comes later reaches the member live).
    const keep = this.#options.keep;
    const upTo = this.#cursor;
    const oldest = this.#historyFloor;
    let read: Promise<StoredMessage[]>;
    if (keep === 0 || upTo === 0 || (query.before !== undefined && query.before <= 1)) {
      read = Promise.resolve([]);
    } else if (query.after !== undefined) {
      const after = Math.max(query.after, oldest);
      read = after >= upTo
        ? Promise.resolve([])
        : this.#range("XRANGE", `(${after}-0`, `${upTo}-0`, limit + 1);
    } else {
      const before = query.before !== undefined ? `(${query.before}-0` : `${upTo}-0`;
      read = this.#range("XREVRANGE", before, `(${oldest}-0`, limit + 1);
    }
    read.then((rows) => {
      if (!this.#fanout.has(member)) return;
      this.#fanout.sendHistory(member, this.#page(rows, limit, query.after === undefined));
      this.#delivered();
    }, (error) => {
      this.#failed(error);
      member.refused("unavailable", "Cannot read history now; try again later", undefined);
      this.#delivered();
    });
  }

  flush(): void {
    this.#flush();
  }

  close(): void {
    this.#closing = true;
  }

  /**
   * Resolves once every message sent to Redis has its answer and every ack is queued (so the
   * last messages before a shutdown are acked), or after `timeoutMs`.
   */
  settle(timeoutMs = 1000): Promise<void> {
    if (this.#inFlight === 0 && this.#pending.length === 0 && this.#acks.length === 0) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      const settled = this.#settled;
      function done() {
        clearTimeout(timer);
        resolve();
        settled?.();
      }
      this.#settled = done;
    });
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#closing = true;
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    this.#wakeReader?.();
    this.#settled?.();
    clearTimeout(this.#cursorTimer);
    this.#readerWaiter?.cancel();
    if (this.#backlogHeld) {
      this.#backlogHeld = false;
      this.#options.release(this.#backlog);
    }
    if (this.#up && this.#registered) {
      await this.#eval(
        this.#control,
        "goodbye",
        [this.#keys.nodes, this.#keys.presence, this.#keys.cursors],
        [this.#prefix, String(this.#node), String(PRESENCE_LENGTH)],
        1000,
      ).catch(() => {});
    }
    this.#up = false;
    for (const client of [this.#commands, this.#control, this.#reader]) {
      try {
        client.destroy();
      } catch {
        // not connected
      }
    }
    await this.#reading;
  }

  static #flushRoom(room: RedisRoom): void {
    room.#flush();
  }

  /**
   * Sends the oldest posted messages to Redis as one batch, unless a batch is on its way: one
   * batch at a time keeps the order of every sender's messages whatever Redis answers (a batch
   * to retry goes again before anything posted after it), and batches grow with the load.
   */
  #flush(): void {
    this.#scheduled = false;
    if (this.#inFlight > 0 || this.#pending.length === 0) return;
    const pending = this.#pending;
    let end = 0;
    let bytes = 0;
    while (end < pending.length && end < MAX_BATCH && bytes < MAX_BATCH_BYTES) {
      bytes += pending[end++].bytes;
    }
    const batch = pending.splice(0, end);
    this.#pendingBytes -= bytes;
    this.#inFlight = batch.length;
    this.#inFlightBytes = bytes;
    this.#send(batch, bytes, performance.now());
  }

  #send(batch: Pending[], bytes: number, since: number): void {
    const args = [
      this.#prefix,
      String(this.#streamLength),
      String(REF_TTL_MS),
      String(this.#node),
      String(this.#cursor),
      String(this.#streamLength - LAG_MARGIN),
      String(LAG_MARGIN),
    ];
    for (const { member, post } of batch) {
      args.push(String(member.id), post.sender, member.ip, post.content, post.ref ?? "");
    }
    const { sha } = this.#scripts!.post;
    this.#call(
      this.#commands,
      ["EVALSHA", sha, "3", this.#keys.seq, this.#keys.messages, this.#keys.cursors, ...args],
      COMMAND_TIMEOUT_MS,
    ).then(
      (reply) => {
        this.#lagging = false;
        const results = reply as string[];
        for (let i = 0; i < batch.length; i++) {
          const [id, ts, fresh] = String(results[i]).split(":");
          const { member, post } = batch[i];
          if (fresh) this.#stats.messages++;
          else this.#stats.duplicates++;
          if (post.ref === undefined || !(member.features & WANTS_IDS)) continue;
          const frame = encodeAck(post.ref, Number(id), Number(ts));
          // An ack goes out once this node has delivered its message: never ahead of a lower
          // id from another node (a client may take an ack's id as "seen up to here").
          if (Number(id) <= this.#cursor) this.#fanout.reply(member, frame);
          else this.#acks.push({ member, frame, id: Number(id) });
        }
        this.#sent();
      },
      (error) => {
        const text = String(error);
        if (/LAGGING/.test(text) && performance.now() - since < LAG_WAIT_MS && !this.#stopped) {
          // A node is catching up with the stream: the senders here wait (flow control) and
          // this batch goes again shortly, before anything posted after it.
          this.#lagging = true;
          this.#checkBacklog();
          const now = performance.now();
          if (now - this.#lagLogged > 5000) {
            this.#lagLogged = now;
            this.#logger.warn("A node is catching up with the stream; senders here wait");
          }
          setTimeout(() => this.#send(batch, bytes, since), LAG_RETRY_MS);
          return;
        }
        this.#lagging = false;
        if (/NOSCRIPT/.test(text)) {
          // Redis restarted and lost its scripts: reload them before anything is accepted.
          this.#scriptsLoaded = false;
          this.#down(error);
        } else if (/LAGGING/.test(text)) {
          this.#stats.storeErrors++;
          this.#logger.warn("A node is still catching up after {s} s; refusing messages", {
            s: LAG_WAIT_MS / 1000,
          });
        } else this.#failed(error);
        for (const { member, post } of batch) {
          this.#stats.refused++;
          member.refused("unavailable", UNAVAILABLE, post.ref);
        }
        this.#sent();
      },
    );
  }

  /** The batch on its way has its answer: the next one may go. */
  #sent(): void {
    this.#inFlight = 0;
    this.#inFlightBytes = 0;
    this.#checkBacklog();
    this.#delivered();
    this.#checkSettled();
    if (this.#pending.length > 0 && !this.#scheduled) {
      this.#scheduled = true;
      setImmediate(RedisRoom.#flushRoom, this);
    }
  }

  #checkSettled(): void {
    if (
      this.#settled && this.#inFlight === 0 && this.#pending.length === 0 && this.#acks.length === 0
    ) this.#settled();
  }

  /** Replays history to a member that has just joined; its room frames wait until then. */
  async #replay(member: RoomMember, request: JoinRequest): Promise<void> {
    // Everything up to the cursor was delivered before this member joined; everything after it
    // reaches the member live (deferred until the replay is queued): no gap, no duplicate. Before
    // this node knows where it starts reading, the member gets everything up to that point.
    let upTo = this.#cursor;
    try {
      if (!this.#cursorKnown) upTo = await this.#findCursor();
      const keep = this.#options.keep;
      const oldest = this.#historyFloor;
      let rows: StoredMessage[] = [];
      let limit = 0;
      let fromNewest = true;
      let more = false;
      if (upTo > 0 && keep > 0) {
        if (request.after !== undefined) {
          limit = MAX_REPLAY;
          fromNewest = false;
          const after = Math.max(request.after, oldest);
          if (after < upTo) {
            rows = await this.#range("XRANGE", `(${after}-0`, `${upTo}-0`, limit + 1);
          }
        } else {
          limit = Math.min(request.history, keep);
          rows = await this.#range("XREVRANGE", `${upTo}-0`, `(${oldest}-0`, limit + 1);
          if (limit === 0) more = rows.length > 0;
        }
      }
      if (!this.#fanout.has(member)) return;
      const page = this.#page(rows, limit, fromNewest);
      if (more) page.more = true;
      this.#fanout.sendHistory(member, page);
    } catch (error) {
      this.#failed(error);
      if (!this.#fanout.has(member)) return;
      member.refused("unavailable", "Cannot read history now; page it later", undefined);
      this.#fanout.reply(member, encodeHistoryEnd(0, true));
    }
    this.#fanout.undefer(member);
    this.#delivered();
  }

  /** Rows (newest first when `fromNewest`) as a page of at most `limit` messages, oldest first. */
  #page(rows: StoredMessage[], limit: number, fromNewest: boolean) {
    const more = rows.length > limit;
    rows = fromNewest ? rows.slice(0, limit).reverse() : rows.slice(0, limit);
    return encodePage(rows, this.#options.replayBytes, fromNewest, more);
  }

  async #range(command: string, from: string, to: string, count: number) {
    const reply = await this.#call(
      this.#commands,
      [command, this.#keys.messages, from, to, "COUNT", String(count)],
      COMMAND_TIMEOUT_MS,
    );
    return (reply as [string, string[]][]).map(toMessage);
  }

  // ---- Redis ----

  /** Sends a command; rejects after `timeoutMs` without an answer (0: no deadline of its own). */
  #call(client: Client, args: string[], timeoutMs: number): Promise<Reply> {
    const reply = client.sendCommand(args) as Promise<Reply>;
    if (timeoutMs === 0) return reply;
    let timer: ReturnType<typeof setTimeout>;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RedisTimeoutError(timeoutMs)), timeoutMs);
    });
    return Promise.race([reply, deadline]).finally(() => clearTimeout(timer));
  }

  async #eval(
    client: Client,
    name: string,
    keys: string[],
    args: string[],
    timeoutMs: number,
  ): Promise<Reply> {
    const { sha, source } = this.#scripts![name];
    const tail = [String(keys.length), ...keys, ...args];
    try {
      return await this.#call(client, ["EVALSHA", sha, ...tail], timeoutMs);
    } catch (error) {
      // Redis restarted (its script cache is empty): send the script itself.
      if (!/NOSCRIPT/.test(String(error))) throw error;
      return await this.#call(client, ["EVAL", source, ...tail], timeoutMs);
    }
  }

  #down(error: unknown): void {
    if (this.#stopped) return;
    if (!this.#downLogged) {
      this.#logger.error(
        "Redis at {url} is unreachable ({reason}); refusing messages until it is back",
        { url: redactRedisUrl(this.#options.url), reason: reasonOf(error) },
      );
      this.#downLogged = true; // once per outage
    }
    this.#up = false;
    // Redis may come back without the scripts (a restart): load them again first.
    this.#scriptsLoaded = false;
  }

  #failed(error: unknown): void {
    this.#stats.storeErrors++;
    if (isConnectionError(error)) this.#down(error);
    else {
      this.#logger.error("Redis refused a command: {reason}", { reason: reasonOf(error) });
    }
  }

  /** Keeps this node's key alive, registers it when needed, reaps lost nodes. */
  async #beat(): Promise<void> {
    if (this.#beating || this.#stopped || !this.#control.isReady) return;
    this.#beating = true;
    try {
      if (!this.#scriptsLoaded) {
        for (const { source } of Object.values(this.#scripts!)) {
          await this.#call(this.#control, ["SCRIPT", "LOAD", source], COMMAND_TIMEOUT_MS);
        }
        this.#scriptsLoaded = true;
      }
      const ttl = String(this.#nodeTtl);
      const asked = performance.now();
      // A node that has just reconnected does not reap: after an outage every node's key may
      // have expired, and the live ones register again within a heartbeat or two.
      const mayReap = this.#up && asked - this.#upSince > this.#nodeTtl;
      const reply = await this.#eval(
        this.#control,
        "heartbeat",
        [
          this.#keys.nodes,
          this.#keys.presence,
          this.#keys.messages,
          this.#keys.seq,
          this.#keys.cursors,
        ],
        [
          this.#prefix,
          String(this.#node),
          ttl,
          String(PRESENCE_LENGTH),
          mayReap ? "1" : "0",
          String(this.#cursor),
          String(this.#options.keep < this.#streamLength ? this.#options.keep : 0),
        ],
        COMMAND_TIMEOUT_MS,
      ) as [number, number, string[], string];
      const alive = Number(reply[0]) === 1;
      this.#historyFloor = Number(reply[3]);
      if (!alive) await this.#register(ttl);
      this.#nodes = reply[2].length + (alive ? 0 : 1);
      this.#historySize = Number(reply[1]);
      if (alive && mayReap) this.#forgetLostNodes(new Set(reply[2].map(Number)), asked);
      // The first presence snapshot failed (e.g. timed out): the reader waits for it.
      if (this.#registered && this.#presenceCursor === null) await this.#snapshot();
      this.#checkReader();
      if (!this.#up) {
        if (this.#everUp) this.#logger.warn("Redis is reachable again; accepting messages");
        else {
          this.#logger.info("Cluster node {node} on Redis at {url}", {
            node: this.#node,
            url: redactRedisUrl(this.#options.url),
          });
        }
        this.#up = true;
        this.#upSince = performance.now();
        this.#readerOkAt = this.#upSince; // the reader gets its own time to come back
        this.#everUp = true;
        this.#downLogged = false;
        this.#wakeReader?.();
      }
      this.#publishQueued();
    } catch (error) {
      this.#failed(error);
    } finally {
      this.#beating = false;
    }
  }

  /**
   * A reader that completes no read for a while (its connection cannot come back, or Redis does
   * not answer it) would leave this node's clients without messages and its acks unsent: the
   * node refuses messages until it reads again.
   */
  #checkReader(): void {
    const stuck = this.#up && this.#readerWaiter === null &&
      performance.now() - this.#readerOkAt > READER_STUCK_MS;
    if (stuck === this.#readerStuck) return;
    this.#readerStuck = stuck;
    if (stuck) {
      this.#logger.error("Cannot read the stream from Redis; refusing messages until it works");
    } else this.#logger.warn("Reading the stream again; accepting messages");
  }

  /** Claims a node number (the first time) or registers again after this node was reaped. */
  async #register(ttl: string): Promise<void> {
    const members: string[] = [];
    const covered = new Set<number>();
    for (const member of this.#fanout.members()) {
      members.push(String(member.id), this.#memberRecord(member));
      covered.add(member.id);
    }
    const mark = this.#changes;
    this.#registering = covered;
    try {
      for (let attempt = 0;; attempt++) {
        const claim = this.#registered ? "0" : "1";
        const reply = await this.#eval(
          this.#control,
          "register",
          [this.#keys.nodes, this.#keys.presence, this.#keys.cursors],
          [
            this.#prefix,
            String(this.#node),
            ttl,
            String(PRESENCE_LENGTH),
            claim,
            String(this.#cursor),
            ...members,
          ],
          COMMAND_TIMEOUT_MS,
        );
        if (Number(reply) === 1) break;
        if (attempt > 10) throw new Error("Cannot claim a node number");
        // Another live node has this number: take another (members that logged in while Redis
        // was unreachable keep theirs; a clash needs the same 1-in-2-million draw as well).
        this.#node = 1 + Math.floor(Math.random() * (NODE_LIMIT - 1));
      }
    } finally {
      this.#registering = null;
    }
    if (this.#registered) {
      this.#logger.warn("Cluster node {node} registered again (it had been presumed lost)", {
        node: this.#node,
      });
    }
    this.#registered = true;
    // The joins queued before the registration are in it (or their member has left since, and
    // the leave is still queued); leaves, and anything queued meanwhile, still go out.
    this.#presenceQueue = this.#presenceQueue.filter((change) =>
      change.op === "l" || change.seq > mark
    );
    await this.#snapshot();
  }

  /** Reloads the other nodes' members at one instant, and tells local members what changed. */
  async #snapshot(): Promise<void> {
    const reply = await this.#eval(
      this.#control,
      "snapshot",
      [this.#keys.nodes, this.#keys.presence],
      [this.#prefix, String(this.#node)],
      COMMAND_TIMEOUT_MS,
    ) as string[];
    const seen = new Map<number, RemoteMember>();
    const now = performance.now();
    for (const json of reply.slice(1)) {
      const member = parseMember(json, now);
      if (member && member.node !== this.#node) seen.set(member.id, member);
    }
    for (const [id, member] of this.#remote) {
      if (!seen.has(id)) this.#remoteLeft(member, "node_lost");
    }
    for (const member of seen.values()) this.#remoteJoined(member);
    this.#presenceCursor = reply[0];
    this.#wakeReader?.();
  }

  /** Members of nodes that are no longer live (e.g. lost while Redis was down) leave here. */
  #forgetLostNodes(live: Set<number>, asked: number): void {
    for (const member of this.#remote.values()) {
      if (member.seen < asked && !live.has(member.node)) this.#remoteLeft(member, "node_lost");
    }
  }

  #memberRecord(member: MemberInfo): string {
    return JSON.stringify({
      id: member.id,
      name: member.name,
      ip: member.ip,
      since: member.since,
      node: this.#node,
    });
  }

  /** Queues a presence change of a local member for Redis. */
  #publish(change: PresenceChange): void {
    const queue = this.#presenceQueue;
    const id = change.member.id;
    if (change.op === "l" && !this.#registering?.has(id)) {
      // A join that never reached Redis (and is not on its way) needs no leave either.
      const i = queue.findIndex((c) => c.op === "j" && c.member.id === id && !this.#sending.has(c));
      if (i >= 0) {
        queue.splice(i, 1);
        return;
      }
    }
    queue.push(change);
    if (this.#up && this.#registered) this.#publishQueued();
  }

  async #publishQueued(): Promise<void> {
    if (this.#sending.size > 0 || this.#registering || !this.#registered) return;
    try {
      while (this.#presenceQueue.length > 0 && this.#up && !this.#registering) {
        const changes = this.#presenceQueue.slice(0, 512);
        for (const change of changes) this.#sending.add(change);
        const args = [this.#prefix, String(this.#node), String(PRESENCE_LENGTH)];
        for (const { op, member, reason } of changes) {
          args.push(op, String(member.id), this.#memberRecord(member), reason ?? "");
        }
        await this.#eval(
          this.#control,
          "presence",
          [this.#keys.presence],
          args,
          COMMAND_TIMEOUT_MS,
        );
        const sent = this.#sending;
        this.#presenceQueue = this.#presenceQueue.filter((change) => !sent.has(change));
        this.#sending = new Set();
      }
    } catch (error) {
      this.#failed(error);
    } finally {
      this.#sending = new Set();
    }
  }

  #remoteJoined(member: RemoteMember): void {
    const known = this.#remote.get(member.id);
    if (known) {
      known.seen = member.seen;
      return;
    }
    this.#remote.set(member.id, member);
    this.#remoteList.add(member);
    this.#fanout.presence(member.id, () => encodeJoined(member));
  }

  #remoteLeft(member: MemberInfo, reason: LeaveReason): void {
    const known = this.#remote.get(member.id);
    if (!known) return;
    this.#remote.delete(member.id);
    this.#remoteList.delete(member.id);
    this.#fanout.presence(member.id, () => encodeLeft(known, reason));
  }

  // ---- the reader ----

  async #readLoop(): Promise<void> {
    while (!this.#stopped) {
      if (!this.#up || !this.#reader.isReady || this.#presenceCursor === null) {
        await this.#sleep(READ_BLOCK_MS);
        continue;
      }
      if (this.#recipientFull()) {
        // A recipient here is full: the stream waits for it (it is dropped within about 1 s if
        // it reads nothing), and the senders here are paused meanwhile. Looked at again every
        // 50 ms too, in case only this room's own backlog still holds the senders.
        await new Promise<void>((resume) => {
          let done = false;
          let cancel = () => {};
          const wake = () => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            cancel();
            resume();
          };
          const timer = setTimeout(wake, 50);
          this.#wakeReader = wake;
          this.#readerWaiter = { cancel: () => cancel() };
          cancel = this.#options.whenFree(wake);
          if (done) cancel();
        });
        this.#readerWaiter = null;
        this.#wakeReader = null;
        this.#readerOkAt = performance.now();
        continue;
      }
      try {
        if (!this.#cursorKnown) await this.#findCursor();
        const reply = await this.#call(this.#reader, [
          "XREAD",
          "COUNT",
          String(READ_COUNT),
          "BLOCK",
          String(READ_BLOCK_MS),
          "STREAMS",
          this.#keys.messages,
          this.#keys.presence,
          `${this.#cursor}-0`,
          this.#presenceCursor,
        ], 0) as [string, [string, string[]][]][] | null; // a hung Redis: the socket times out
        this.#readerOkAt = performance.now();
        if (this.#readerStuck) this.#checkReader();
        if (reply && !this.#stopped) this.#deliver(reply);
      } catch (error) {
        if (this.#stopped) break;
        this.#stats.storeErrors++;
        this.#logger.debug("Redis read failed: {reason}", { reason: reasonOf(error) });
        await this.#sleep(100);
      }
    }
  }

  /** Whether a recipient here is full (this room's backlog aside). */
  #recipientFull(): boolean {
    return this.#options.holders() > (this.#backlogHeld ? 1 : 0);
  }

  /**
   * Where this node starts reading: after the last message in the stream when it first asks.
   * Asked once; a replay for a member that joined before waits for the same answer.
   */
  #findCursor(): Promise<number> {
    this.#start ??= (async () => {
      const reply = await this.#call(
        this.#commands,
        ["XREVRANGE", this.#keys.messages, "+", "-", "COUNT", "1"],
        COMMAND_TIMEOUT_MS,
      ) as [string, string[]][];
      const start = reply.length > 0 ? entryId(reply[0][0]) : 0;
      if (!this.#cursorKnown) {
        this.#cursor = Math.max(this.#cursor, start);
        this.#cursorKnown = true;
      }
      return start;
    })();
    this.#start.catch(() => this.#start = null); // asked again next time
    return this.#start;
  }

  #deliver(reply: [string, [string, string[]][]][]): void {
    let gap = 0;
    for (const [stream, entries] of reply) {
      if (stream === this.#keys.messages) {
        for (const entry of entries) {
          const id = entryId(entry[0]);
          if (id <= this.#cursor) continue;
          // Ids are consecutive: a jump means the stream was trimmed past messages this node had
          // not read, unless the entry says the counter started again (from the clock).
          if (id > this.#cursor + 1 && this.#cursor > 0 && field(entry[1], "k") !== "1") {
            gap += id - this.#cursor - 1;
          }
          this.#cursor = id;
          const record = toMessage(entry);
          const from = Number(field(entry[1], "m"));
          this.#stats.deliveries += this.#fanout.broadcast(record, from);
          // A recipient is full: the rest of this read waits (it is read again from the cursor).
          if (this.#recipientFull()) break;
        }
      } else {
        const now = performance.now();
        for (const [id, fields] of entries) {
          this.#presenceCursor = id;
          const member = parseMember(field(fields, "m"), now);
          if (!member || member.node === this.#node) continue;
          if (field(fields, "e") === "j") this.#remoteJoined(member);
          else this.#remoteLeft(member, (field(fields, "w") || "quit") as LeaveReason);
        }
      }
    }
    if (gap > 0) this.#missed(gap);
    const acks = this.#acks;
    let n = 0;
    while (n < acks.length && acks[n].id <= this.#cursor) {
      this.#fanout.reply(acks[n].member, acks[n].frame);
      n++;
    }
    if (n > 0) acks.splice(0, n);
    this.#checkSettled();
    this.#delivered();
    this.#publishCursor();
  }

  /**
   * Tells the other nodes how far this node has read (so that posting waits for it before the
   * stream is trimmed past it): at most every CURSOR_EVERY_MS, and once more after the last read.
   */
  #publishCursor(): void {
    if (this.#cursorTimer !== undefined || this.#stopped) return;
    const wait = this.#cursorSent + CURSOR_EVERY_MS - performance.now();
    if (wait > 0) {
      this.#cursorTimer = setTimeout(() => {
        this.#cursorTimer = undefined;
        this.#publishCursor();
      }, wait);
      return;
    }
    this.#cursorSent = performance.now();
    this.#eval(
      this.#control,
      "cursor",
      [this.#keys.cursors],
      [String(this.#node), String(this.#cursor)],
      COMMAND_TIMEOUT_MS,
    ).catch(() => {});
  }

  /**
   * This node missed messages (it fell further behind than the stream keeps): its members would
   * not see the gap, so they are dropped, and reconnect to catch up from history.
   */
  #missed(count: number): void {
    this.#logger.error(
      "This node missed {count} messages (the stream was trimmed first); dropping its {members} members so they catch up from history",
      { count, members: this.#fanout.size },
    );
    for (const member of [...this.#fanout.members()]) member.drop("missed messages");
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wakeReader = null;
        resolve();
      }, ms);
      this.#wakeReader = () => {
        clearTimeout(timer);
        this.#wakeReader = null;
        resolve();
      };
    });
  }
}

function field(fields: string[], name: string): string {
  for (let i = 0; i < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return "";
}

function entryId(id: string): number {
  return Number(id.slice(0, id.indexOf("-")));
}

function toMessage(entry: [string, string[]]): StoredMessage {
  const fields = entry[1];
  const record: StoredMessage = {
    id: entryId(entry[0]),
    ts: Number(field(fields, "t")),
    sender: field(fields, "s"),
    senderIp: field(fields, "i"),
    content: field(fields, "c"),
  };
  const ref = field(fields, "r");
  if (ref !== "") record.ref = ref;
  return record;
}

function parseMember(json: string, seen: number): RemoteMember | null {
  try {
    const { id, name, ip, since, node } = JSON.parse(json);
    if (
      !Number.isSafeInteger(id) || typeof name !== "string" || typeof ip !== "string" ||
      typeof since !== "number" || !Number.isSafeInteger(node)
    ) return null;
    return { id, name, ip, since, node, seen };
  } catch {
    return null;
  }
}

/** Redis did not answer in time. */
class RedisTimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer in ${ms} ms`);
    this.name = "RedisTimeoutError";
  }
}

function isConnectionError(error: unknown): boolean {
  const name = (error as Error)?.name ?? "";
  const message = String((error as Error)?.message ?? error);
  return /Offline|Closed|Socket|Connection|Timeout/i.test(name) ||
    /offline|closed|ECONN|EPIPE|socket|timeout|LOADING|connect/i.test(message);
}

function reasonOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
