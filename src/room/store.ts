/**
 * The room's history: every accepted message with its id, so clients can page back through it and a
 * resent `ref` is answered with its original id instead of being stored twice.
 *
 * Two implementations share one contract ({@linkcode HistoryStore}):
 * - SQLite (`node:sqlite`), file `chat.db` in the data dir: history, the id counter and recent refs
 *   survive a restart and a `kill -9`.
 * - Memory: used when the process may not write the data dir. Same behaviour, lost on exit.
 *
 * Every call is synchronous. SQLite blocks the event loop while it works, so the store is built to
 * keep each call short: one transaction per batch, prepared statements, cheap pruning, and a lock
 * held by another process makes `append` fail within milliseconds instead of waiting for it.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";

/** One accepted message as stored. */
export interface StoredMessage {
  /** Strictly increasing across the room's life (restarts included); may skip values. */
  id: number;
  /** Acceptance time, ms since the epoch. */
  ts: number;
  /** The sender's name. */
  sender: string;
  /** The sender's address, kept for moderation; not part of what clients are shown. */
  senderIp: string;
  /** The message text. */
  content: string;
  /** The client-chosen reference (1..64 chars) used to de-duplicate a resent message. */
  ref?: string;
}

/** Where and when a `ref` was accepted: what the room answers to a resend of it. */
export interface RefRecord {
  /** The id the message got when first accepted. */
  id: number;
  /** Its acceptance time, ms since the epoch. */
  ts: number;
}

/**
 * The room's history. The room calls {@linkcode HistoryStore.append} once per event-loop turn with
 * everything accepted in that turn and sends acks only after it returns, so an ack means "stored".
 */
export interface HistoryStore {
  /** Which implementation this is, for the startup log and metrics. */
  readonly kind: "sqlite" | "memory";
  /** The database file, for `sqlite`. */
  readonly path?: string;
  /** Highest id ever appended (0 for a new store); survives restarts and pruning. */
  lastId(): number;
  /** Messages currently kept (a counter, not a scan). */
  count(): number;
  /**
   * Stores a batch in one transaction: all of it or nothing. Ids must be above {@linkcode lastId}
   * and increasing (a plain `Error` otherwise: that is a bug in the caller). Records each `ref` and
   * prunes to the configured number of kept messages. Throws {@linkcode StoreError} on a storage
   * failure; then nothing of the batch is stored, `lastId()` is unchanged and a later call may
   * succeed once the cause is gone.
   */
  append(batch: readonly StoredMessage[]): void;
  /**
   * Up to `limit` messages with the largest ids below `id` (`undefined`: the newest), oldest first,
   * which is the order a client shows them in when scrolling back.
   */
  before(id: number | undefined, limit: number): StoredMessage[];
  /** Up to `limit` messages with ids above `id`, oldest first (catching up after a reconnect). */
  after(id: number, limit: number): StoredMessage[];
  /**
   * The record of a `ref` accepted within retention: its message is still kept, or it was accepted
   * less than the ref TTL (default 10 minutes) ago. Refs are room-wide, not per client.
   */
  findRef(ref: string): RefRecord | undefined;
  /** Releases the store; calling it again does nothing. Other calls afterwards throw. */
  close(): void;
}

/**
 * A storage failure while running (disk full, database locked by another process, file made
 * read-only). The store stays usable: the room refuses messages with a non-fatal `unavailable`
 * error meanwhile, and the next call after the cause is gone works. The message says why in plain
 * words, e.g. "database or disk is full" or "database is locked".
 */
export class StoreError extends Error {
  /** `message` is the reason in plain words; `options.cause` the underlying SQLite error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreError";
  }
}

/**
 * The history database cannot be opened at start (corrupt, not a database, unreadable, locked, or
 * written by a newer version). Fatal: serving with a history the server cannot keep would lose
 * acknowledged messages. The message names the file and the reason.
 */
export class StoreOpenError extends Error {
  /** `message` names the file and the reason; `options.cause` the underlying error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreOpenError";
  }
}

/** How to open the history store. */
export interface OpenStoreOptions {
  /** The data dir (`--data-dir`); created (mode 0700) if missing and writable. */
  dataDir: string;
  /** How many messages to keep (`--history-keep`); 0 keeps none but still counts ids and refs. */
  keep: number;
  /** How long a ref stays findable even after its message is pruned (default 10 minutes). */
  refTtlMs?: number;
  /** The clock for ref expiry, for tests (default `Date.now`). */
  now?: () => number;
}

/** The opened store, and the warning to log once when history cannot be kept on disk. */
export interface OpenedStore {
  /** The store to use. */
  store: HistoryStore;
  /** Set when falling back to memory: names the flags that would keep history on disk. */
  warning?: string;
}

/** Refs remembered beyond those of kept messages (for the TTL), at most. */
const EXTRA_REFS = 100_000;
/** Why refs are remembered for at least this long: a client resending after a reconnect. */
const DEFAULT_REF_TTL_MS = 10 * 60_000;
/** Expired refs are deleted at most this often: a scan per append would cost for nothing. */
const REF_PRUNE_INTERVAL_MS = 5_000;
/** The schema this code writes; a database with a higher `user_version` is refused. */
const SCHEMA_VERSION = 1;
/**
 * SQLite waits for a lock by sleeping on the event loop's thread, freezing every connection, so a
 * database locked by another process must fail fast (StoreError, `unavailable` to the client).
 */
const BUSY_TIMEOUT_MS = 5;
/** At start nothing is served yet, so a brief lock (another process's backup) may be waited out. */
const OPEN_BUSY_TIMEOUT_MS = 1_000;

/**
 * Opens the history in `dataDir/chat.db`, or in memory when the process may not read and write
 * `dataDir` (checked without prompting). A run with only `--allow-net --allow-read` must still
 * serve, so missing permission is a warning, not an error; a database that exists but cannot be
 * used is an error ({@linkcode StoreOpenError}), because serving without it would hide its history.
 */
export function openStore(options: OpenStoreOptions): OpenedStore {
  const { dataDir, keep } = options;
  const refs = { refTtlMs: options.refTtlMs, now: options.now };
  if (!granted("read", dataDir) || !granted("write", dataDir)) {
    const warning = `No permission to write ${dataDir}: history is kept in memory only and lost ` +
      `on restart; run with --allow-read=${dataDir} --allow-write=${dataDir} to keep it`;
    return { store: memoryStore(keep, { ...refs, startId: clockStartId() }), warning };
  }
  try {
    Deno.mkdirSync(dataDir, { recursive: true, mode: 0o700 }); // an existing dir is left as it is
  } catch (error) {
    const message = `Cannot create the data dir ${dataDir}: ${reason(error)}`;
    throw new StoreOpenError(message, { cause: error });
  }
  const path = /[\\/]$/.test(dataDir) ? `${dataDir}chat.db` : `${dataDir}/chat.db`;
  return { store: sqliteStore(path, keep, refs) };
}

/**
 * A history kept in memory, for a run that may not write its data dir (and for tests). Pruning is
 * amortised O(1): dropped messages are skipped by a head index and the array is compacted only
 * once half of it is dead, so `keep` = 100000 does not shift the array on every message.
 */
export function memoryStore(
  keep: number,
  options: { refTtlMs?: number; now?: () => number; startId?: number } = {},
): HistoryStore {
  return new MemoryStore(checkKeep(keep), refIndex(keep, options), options.startId ?? 0);
}

/**
 * A first id for a memory store that still lies above every id of an earlier run: the clock in
 * microseconds. Ids then increase across restarts without a file (unless a run averaged more
 * than a million messages a second), as the protocol promises; they skip values, which it allows.
 */
export function clockStartId(): number {
  return Date.now() * 1000;
}

/**
 * A history in the SQLite file `path` (created mode 0600 if missing: chat history is private).
 * Throws {@linkcode StoreOpenError} naming the file when it cannot be used: not a database,
 * corrupt, unreadable, locked by another process, or of a newer schema.
 */
export function sqliteStore(
  path: string,
  keep: number,
  options: { refTtlMs?: number; now?: () => number } = {},
): HistoryStore {
  return SqliteStore.open(path, checkKeep(keep), refIndex(keep, options));
}

/**
 * The refs accepted within retention, looked up in memory by both stores. The SQLite store only
 * logs refs in id order (for restarts): refs are client-chosen, often random UUIDs, and an SQLite
 * index on random keys dirties a page per insert, which made a 1000-message batch about 4x slower.
 * The price is memory, about 150 bytes a ref (15 MB when 100000 kept messages all carry one).
 */
class RefIndex {
  /** Ref to its record. */
  readonly #refs = new Map<string, RefRecord>();
  /**
   * The refs in acceptance order (a ref accepted again is queued again; its older entry is
   * stale), consumed from `#head`. A queue rather than the Map's own order: V8 leaves deleted
   * entries at the front of a Map until it is rehashed, so finding its oldest entry after many
   * deletions costs as many steps as there were deletions.
   */
  #queue: { ref: string; record: RefRecord }[] = [];
  #head = 0;
  readonly #ttl: number;
  readonly #now: () => number;
  readonly #max: number;
  #nextSweep: number;
  /** The highest id forgotten for room (over `#max`) since the last sweep. */
  #evicted = 0;

  constructor(ttl: number, now: () => number, max: number) {
    this.#ttl = ttl;
    this.#now = now;
    this.#max = max;
    this.#nextSweep = now() + REF_PRUNE_INTERVAL_MS;
  }

  /**
   * Remembers a ref. Past `max` refs the oldest is forgotten, TTL or not: the refs a client can
   * make the server keep are bounded however fast the room talks (see {@link maxRefs}).
   */
  add(ref: string, record: RefRecord): void {
    this.#refs.set(ref, record);
    this.#queue.push({ ref, record });
    while (this.#refs.size > this.#max) {
      const id = this.#forgetOldest();
      if (id > this.#evicted) this.#evicted = id;
    }
  }

  /** The ref's record if its message is still kept (id >= `oldestKept`) or its TTL runs. */
  find(ref: string, oldestKept: number): RefRecord | undefined {
    const record = this.#refs.get(ref);
    if (record === undefined) return undefined;
    const retained = record.id >= oldestKept || record.ts >= this.cutoff();
    return retained ? { ...record } : undefined;
  }

  /** Refs accepted before this time are forgotten once their message is gone. */
  cutoff(): number {
    return this.#now() - this.#ttl;
  }

  /** Whether a sweep is due: at most one per interval, since most appends would find nothing. */
  sweepDue(): boolean {
    return this.#now() >= this.#nextSweep;
  }

  /**
   * Forgets refs accepted before `cutoff` whose message is gone (ids below `oldestKept`).
   * Returns the highest id forgotten (0 if none), including those forgotten for room since the
   * last sweep: the SQLite log deletes up to it by its key.
   */
  sweep(cutoff: number, oldestKept: number): number {
    this.#nextSweep = this.#now() + REF_PRUNE_INTERVAL_MS;
    let highest = this.#evicted;
    this.#evicted = 0;
    while (this.#head < this.#queue.length) {
      const { record } = this.#queue[this.#head];
      if (record.id >= oldestKept || record.ts >= cutoff) break;
      highest = Math.max(highest, this.#forgetOldest());
    }
    return highest;
  }

  /** The highest id {@linkcode RefIndex.sweep} would return now, forgetting nothing. */
  sweepBound(cutoff: number, oldestKept: number): number {
    let highest = this.#evicted;
    for (let i = this.#head; i < this.#queue.length; i++) {
      const { record } = this.#queue[i];
      if (record.id >= oldestKept || record.ts >= cutoff) break;
      highest = Math.max(highest, record.id);
    }
    return highest;
  }

  /** Takes the oldest queue entry; forgets its ref unless it was accepted again since. */
  #forgetOldest(): number {
    const { ref, record } = this.#queue[this.#head++];
    if (this.#refs.get(ref) === record) this.#refs.delete(ref);
    if (this.#head >= 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return record.id;
  }

  clear(): void {
    this.#refs.clear();
    this.#queue = [];
    this.#head = 0;
  }
}

/**
 * Most refs remembered: every kept message's, plus {@link EXTRA_REFS} more for the 10 minutes
 * after their messages are pruned. Without a bound, a room at 50,000 messages a second would
 * keep 30 million refs (gigabytes) for those 10 minutes.
 */
export function maxRefs(keep: number): number {
  return keep + EXTRA_REFS;
}

function refIndex(keep: number, options: { refTtlMs?: number; now?: () => number }): RefIndex {
  const ttl = options.refTtlMs ?? DEFAULT_REF_TTL_MS;
  if (!(ttl >= 0)) throw new Error(`The ref TTL must be >= 0 ms, not ${ttl}`);
  return new RefIndex(ttl, options.now ?? Date.now, maxRefs(keep));
}

class MemoryStore implements HistoryStore {
  readonly kind = "memory";
  readonly #keep: number;
  readonly #refs: RefIndex;
  /** Kept messages are `#messages[#head..]`, in id order. */
  #messages: StoredMessage[] = [];
  #head = 0;
  #lastId: number;
  #closed = false;

  constructor(keep: number, refs: RefIndex, startId: number) {
    this.#keep = keep;
    this.#refs = refs;
    this.#lastId = startId;
  }

  lastId(): number {
    return this.#lastId;
  }

  count(): number {
    return this.#messages.length - this.#head;
  }

  append(batch: readonly StoredMessage[]): void {
    this.#checkOpen();
    checkBatch(batch, this.#lastId);
    if (batch.length === 0) return;
    for (const message of batch.slice(Math.max(0, batch.length - this.#keep))) {
      this.#messages.push(copy(message));
    }
    for (const { id, ts, ref } of batch) {
      if (ref !== undefined) this.#refs.add(ref, { id, ts });
    }
    this.#lastId = batch[batch.length - 1].id;
    this.#head += Math.max(0, this.count() - this.#keep);
    if (this.#head >= 1024 && this.#head * 2 >= this.#messages.length) {
      this.#messages = this.#messages.slice(this.#head);
      this.#head = 0;
    }
    if (this.#refs.sweepDue()) this.#refs.sweep(this.#refs.cutoff(), this.#oldestKept());
  }

  before(id: number | undefined, limit: number): StoredMessage[] {
    this.#checkOpen();
    const end = id === undefined ? this.#messages.length : this.#search((other) => other >= id);
    return this.#messages.slice(Math.max(this.#head, end - clampLimit(limit)), end).map(copy);
  }

  after(id: number, limit: number): StoredMessage[] {
    this.#checkOpen();
    const start = this.#search((other) => other > id);
    return this.#messages.slice(start, start + clampLimit(limit)).map(copy);
  }

  findRef(ref: string): RefRecord | undefined {
    this.#checkOpen();
    return this.#refs.find(ref, this.#oldestKept());
  }

  close(): void {
    this.#closed = true;
    this.#messages = [];
    this.#head = 0;
    this.#refs.clear();
  }

  /** The oldest kept id; above every id when none is kept. */
  #oldestKept(): number {
    return this.count() > 0 ? this.#messages[this.#head].id : this.#lastId + 1;
  }

  /** Index of the first kept message whose id passes `test` (binary search: ids are sorted). */
  #search(test: (id: number) => boolean): number {
    let low = this.#head;
    let high = this.#messages.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (test(this.#messages[mid].id)) high = mid;
      else low = mid + 1;
    }
    return low;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("The history store is closed");
  }
}

/** A row of `messages` as read back (as an array: cheaper than an object per row). */
type MessageRow = [
  id: number,
  ts: number,
  sender: string,
  senderIp: string,
  content: string,
  ref: string | null,
];

/**
 * A kept message holds its own `ref`; `refs` logs, in id order, the refs that outlive their
 * message (within the TTL: copied there when the message is pruned, or written there at once when
 * the message is not kept at all). Both are read back into the {@linkcode RefIndex} at open.
 * `meta.last_id` keeps the counter when no message is kept.
 */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    sender TEXT NOT NULL,
    sender_ip TEXT NOT NULL,
    content TEXT NOT NULL,
    ref TEXT
  );
  CREATE TABLE IF NOT EXISTS refs (id INTEGER PRIMARY KEY, ref TEXT NOT NULL, ts INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
`;

const COLUMNS = "id, ts, sender, sender_ip, content, ref";

class SqliteStore implements HistoryStore {
  readonly kind = "sqlite";
  readonly path: string;
  readonly #db: DatabaseSync;
  /** Held for the store's life, so a second server on the same data dir cannot open it. */
  readonly #lock: DatabaseSync;
  readonly #keep: number;
  readonly #refs: RefIndex;
  readonly #sql: ReturnType<typeof prepareAll>;
  #lastId = 0;
  #count = 0;
  #oldestKept = 1;

  private constructor(
    path: string,
    db: DatabaseSync,
    lock: DatabaseSync,
    keep: number,
    refs: RefIndex,
  ) {
    this.path = path;
    this.#db = db;
    this.#lock = lock;
    this.#keep = keep;
    this.#refs = refs;
    this.#sql = prepareAll(db);
  }

  static open(path: string, keep: number, refs: RefIndex): SqliteStore {
    let db: DatabaseSync | undefined;
    let lock: DatabaseSync | undefined;
    try {
      lock = ownerLock(`${path}.lock`);
      createPrivateFile(path);
      db = new DatabaseSync(path);
      db.exec(`PRAGMA busy_timeout = ${OPEN_BUSY_TIMEOUT_MS}`);
      // The first read of the file: this is where garbage, a truncated header or an encrypted
      // file fails ("file is not a database").
      const { user_version: version } = db.prepare("PRAGMA user_version").get() as {
        user_version: number;
      };
      if (version > SCHEMA_VERSION) {
        throw new Error(
          `it was written by a newer version of the server (schema ${version}; this one knows ` +
            `up to ${SCHEMA_VERSION})`,
        );
      }
      // WAL with synchronous=NORMAL: a commit is in the OS once `append` returns, so an acked
      // message survives `kill -9` of the server. It is not power-loss durable (the last commits
      // may be lost when the machine dies); synchronous=FULL would be, at an fsync per batch.
      db.exec("PRAGMA journal_mode = WAL");
      db.exec("PRAGMA synchronous = NORMAL");
      db.exec("BEGIN IMMEDIATE");
      if (version < SCHEMA_VERSION) {
        db.exec(SCHEMA);
        db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      }
      db.exec("COMMIT");
      const store = new SqliteStore(path, db, lock, keep, refs);
      store.#load();
      db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
      return store;
    } catch (error) {
      for (const handle of [db, lock]) {
        try {
          handle?.close();
        } catch { /* the open failure is the one to report */ }
      }
      throw new StoreOpenError(`Cannot open the history database ${path}: ${reason(error)}`, {
        cause: error,
      });
    }
  }

  lastId(): number {
    return this.#lastId;
  }

  count(): number {
    return this.#count;
  }

  append(batch: readonly StoredMessage[]): void {
    checkBatch(batch, this.#lastId);
    if (batch.length === 0) return;
    const sql = this.#sql;
    const kept = batch.slice(Math.max(0, batch.length - this.#keep));
    const lastId = batch[batch.length - 1].id;
    // Expired refs: the log deletes up to the highest of them by its primary key (instead of
    // scanning every row for old times), and memory forgets them once the commit is done.
    const sweep = this.#refs.sweepDue();
    const cutoff = this.#refs.cutoff();
    const { count, oldestKept } = this.#transaction(() => {
      for (const { id, ts, sender, senderIp, content, ref } of kept) {
        sql.insert.run(id, ts, sender, senderIp, content, ref ?? null);
      }
      // A kept message holds its own ref; only those of messages not kept go to the log.
      for (let i = 0; i < batch.length - kept.length; i++) {
        const { id, ts, ref } = batch[i];
        if (ref !== undefined) sql.logRef.run(id, ref, ts);
      }
      sql.putLastId.run(lastId);
      const pruned = this.#prune(kept.length, lastId, cutoff);
      const bound = sweep ? this.#refs.sweepBound(cutoff, pruned.oldestKept) : 0;
      if (bound > 0) sql.sweepRefs.run(bound);
      return pruned;
    });
    this.#lastId = lastId;
    this.#count = count;
    this.#oldestKept = oldestKept;
    if (sweep) this.#refs.sweep(cutoff, oldestKept);
    for (const { id, ts, ref } of batch) {
      if (ref !== undefined) this.#refs.add(ref, { id, ts });
    }
  }

  before(id: number | undefined, limit: number): StoredMessage[] {
    const n = clampLimit(limit);
    if (n === 0) return [];
    const rows = this.#read(() =>
      id === undefined ? this.#sql.newest.all(n) : this.#sql.before.all(id, n)
    ) as unknown[] as MessageRow[];
    return rows.reverse().map(toMessage);
  }

  after(id: number, limit: number): StoredMessage[] {
    const n = clampLimit(limit);
    if (n === 0) return [];
    const rows = this.#read(() => this.#sql.after.all(id, n)) as unknown[] as MessageRow[];
    return rows.map(toMessage);
  }

  findRef(ref: string): RefRecord | undefined {
    if (!this.#db.isOpen) throw new Error("The history store is closed");
    return this.#refs.find(ref, this.#oldestKept);
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close();
    if (this.#lock.isOpen) this.#lock.close();
    this.#refs.clear();
  }

  /**
   * Reads the counter, the count and the retained refs, and prunes to a `keep` lowered since. It
   * writes `last_id` even when unchanged: a file we may read but not write (or that another
   * process holds) must fail now, at start, rather than on every append.
   */
  #load(): void {
    const sql = this.#sql;
    const meta = sql.lastId.get() as { value: number } | undefined;
    const newest = sql.newestId.get() as { id: number | null };
    this.#lastId = Math.max(meta?.value ?? 0, newest.id ?? 0);
    this.#count = Number((sql.count.get() as { n: number }).n);
    ({ count: this.#count, oldestKept: this.#oldestKept } = this.#transaction(() => {
      sql.putLastId.run(this.#lastId);
      return this.#prune(0, this.#lastId, this.#refs.cutoff());
    }));
    // The log's refs (of pruned messages) are older than every kept message's: in id order.
    const logged = sql.retainedRefs.all(this.#oldestKept, this.#refs.cutoff()) as unknown[];
    const kept = sql.keptRefs.all() as unknown[];
    for (const [id, ref, ts] of [...logged, ...kept] as [number, string, number][]) {
      this.#refs.add(ref, { id, ts });
    }
  }

  /**
   * Deletes the oldest messages beyond `keep` once `added` rows are in (by count, not by id
   * arithmetic: ids may skip values). Returns the new count and the oldest kept id.
   */
  #prune(added: number, lastId: number, cutoff: number): { count: number; oldestKept: number } {
    let count = this.#count + added;
    if (count > this.#keep) {
      const sql = this.#sql;
      const { id: bound } = sql.pruneBound.get(count - this.#keep - 1) as { id: number };
      // Refs still within their TTL outlive their message: copied to the log, inside SQLite.
      sql.logPrunedRefs.run(bound, cutoff);
      count -= Number(sql.pruneMessages.run(bound).changes);
    }
    const oldest = this.#sql.oldestId.get() as { id: number | null };
    return { count, oldestKept: oldest.id ?? lastId + 1 };
  }

  /** Runs `work` in one write transaction; on failure rolls back and throws StoreError. */
  #transaction<T>(work: () => T): T {
    const db = this.#db;
    try {
      this.#sql.begin.run(); // prepared once: exec() would parse the text on every batch
      const result = work();
      this.#sql.commit.run();
      return result;
    } catch (error) {
      if (db.isOpen && db.isTransaction) {
        try {
          db.exec("ROLLBACK");
        } catch { /* SQLite may have rolled back already; the first error is the one to report */ }
      }
      throw isSqliteError(error) ? new StoreError(reason(error), { cause: error }) : error;
    }
  }

  #read<T>(query: () => T): T {
    try {
      return query();
    } catch (error) {
      throw isSqliteError(error) ? new StoreError(reason(error), { cause: error }) : error;
    }
  }
}

/** The statements the store reuses; preparing them also checks that the schema is ours. */
function prepareAll(db: DatabaseSync) {
  const prepare = (sql: string): StatementSync => db.prepare(sql);
  // Rows as arrays are about a third faster to read than an object per row. The method is in
  // Deno 2.9's node:sqlite but not yet in its type definitions.
  type ArrayRows = StatementSync & { setReturnArrays(enabled: boolean): void };
  const rows = (sql: string): StatementSync => {
    const statement = db.prepare(sql) as ArrayRows;
    statement.setReturnArrays(true);
    return statement;
  };
  return {
    begin: prepare("BEGIN IMMEDIATE"),
    commit: prepare("COMMIT"),
    insert: prepare(`INSERT INTO messages (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)`),
    logRef: prepare("INSERT INTO refs (id, ref, ts) VALUES (?, ?, ?)"),
    putLastId: prepare(
      "INSERT INTO meta (key, value) VALUES ('last_id', ?) " +
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ),
    lastId: prepare("SELECT value FROM meta WHERE key = 'last_id'"),
    newestId: prepare("SELECT MAX(id) AS id FROM messages"),
    oldestId: prepare("SELECT MIN(id) AS id FROM messages"),
    count: prepare("SELECT COUNT(*) AS n FROM messages"),
    pruneBound: prepare("SELECT id FROM messages ORDER BY id LIMIT 1 OFFSET ?"),
    logPrunedRefs: prepare(
      "INSERT OR IGNORE INTO refs (id, ref, ts) " +
        "SELECT id, ref, ts FROM messages WHERE id <= ? AND ref IS NOT NULL AND ts >= ?",
    ),
    pruneMessages: prepare("DELETE FROM messages WHERE id <= ?"),
    keptRefs: rows("SELECT id, ref, ts FROM messages WHERE ref IS NOT NULL ORDER BY id"),
    // Up to the highest ref RefIndex.sweep forgot (past the TTL, and its message gone).
    sweepRefs: prepare("DELETE FROM refs WHERE id <= ?"),
    retainedRefs: rows("SELECT id, ref, ts FROM refs WHERE id >= ? OR ts >= ? ORDER BY id"),
    newest: rows(`SELECT ${COLUMNS} FROM messages ORDER BY id DESC LIMIT ?`),
    before: rows(`SELECT ${COLUMNS} FROM messages WHERE id < ? ORDER BY id DESC LIMIT ?`),
    after: rows(`SELECT ${COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?`),
  };
}

function toMessage([id, ts, sender, senderIp, content, ref]: MessageRow): StoredMessage {
  return ref === null
    ? { id, ts, sender, senderIp, content }
    : { id, ts, sender, senderIp, content, ref };
}

function copy({ id, ts, sender, senderIp, content, ref }: StoredMessage): StoredMessage {
  return ref === undefined
    ? { id, ts, sender, senderIp, content }
    : { id, ts, sender, senderIp, content, ref };
}

/**
 * Takes the data dir's owner lock: a small SQLite file held in exclusive locking mode for the
 * store's life. Two servers on one database would each count ids from their own cache and refuse
 * every message after the other wrote; the second is stopped at start instead. The OS releases
 * the lock when the process dies (`kill -9` included), and `chat.db` itself stays readable by
 * other programs (online backups).
 */
function ownerLock(path: string): DatabaseSync {
  createPrivateFile(path);
  const lock = new DatabaseSync(path);
  try {
    lock.exec("PRAGMA busy_timeout = 0");
    lock.exec("PRAGMA locking_mode = EXCLUSIVE");
    lock.exec("PRAGMA journal_mode = OFF"); // nothing to roll back: no -journal file left beside it
    lock.exec("BEGIN EXCLUSIVE");
    lock.exec("COMMIT");
    return lock;
  } catch (error) {
    lock.close();
    if (reason(error).includes("locked")) {
      throw new Error(
        `another server is using it (${path} is locked); run one server per data dir`,
      );
    }
    throw error;
  }
}

/** Creates `path` with mode 0600 unless it exists, so SQLite (and its -wal/-shm, which copy the
 * database's mode) never makes chat history readable by other users. */
function createPrivateFile(path: string): void {
  try {
    Deno.openSync(path, { write: true, createNew: true, mode: 0o600 }).close();
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
  }
}

function checkBatch(batch: readonly StoredMessage[], lastId: number): void {
  let previous = lastId;
  for (const { id } of batch) {
    if (!Number.isSafeInteger(id) || id <= previous) {
      throw new Error(`History append: id ${id} must be an integer above ${previous}`);
    }
    previous = id;
  }
}

function checkKeep(keep: number): number {
  if (!Number.isSafeInteger(keep) || keep < 0) {
    throw new Error(`History keep must be a whole number >= 0, not ${keep}`);
  }
  return keep;
}

/** A usable row count: NaN and negatives give none, Infinity gives all. */
function clampLimit(limit: number): number {
  return Number.isNaN(limit) ? 0 : Math.max(0, Math.min(Math.floor(limit), 2 ** 53 - 1));
}

function granted(name: "read" | "write", path: string): boolean {
  return Deno.permissions.querySync({ name, path }).state === "granted";
}

function isSqliteError(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === "ERR_SQLITE_ERROR";
}

/** The plain-words reason of an error, e.g. SQLite's "database is locked". */
function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
