/**
 * The members of a room, kept ready to send: each member's JSON is made once, when it joins, and
 * a member list (`welcome.members`, the answer to `who`) is built from it instead of encoding
 * every member again for every login.
 *
 * **Parts.** A list whose frame would be larger than {@link MEMBERS_PART_BYTES} goes out in parts
 * (see docs/PROTOCOL.md): the members are kept in buckets of consecutive members (in the order
 * they joined), each small enough to be one part. A bucket's `who` frame is built once and shared
 * by every client that asks until the bucket changes: a join changes only the last bucket, a
 * leave only its own (merged with a neighbour when the two fit in one part). So a login in a room
 * of N members copies about one part, not N members, and its parts are the same bytes (the same
 * memory) as those of every other client's list.
 *
 * A list that fits in one frame is sent in one frame, byte for byte as before parts existed.
 *
 * @module
 */
import { HEADER_SIZE, type JsonObject, type MemberInfo, memberJson } from "../protocol/mod.ts";

/**
 * Largest body of a frame that carries a member list, bytes. Clients accept frames up to 1 MiB:
 * a quarter of that leaves a wide margin, keeps a part quick to parse (a browser's main thread
 * parses 256 KiB in a few milliseconds), and still holds about 700 members with 64-character
 * non-ASCII names (2,500 with short ones), so a list is split only in a large room.
 */
export const MEMBERS_PART_BYTES = 256 * 1024;
/**
 * Room kept in every part for the frame around the members: `{"type":"who","members":[` and
 * `],"more":false}`, or the welcome's own fields (its `member`, `server`, `limits`, a few hundred
 * bytes).
 */
const HEAD_ROOM = 4 * 1024;
/** Most bytes of members (with the commas between them) in one bucket, so in one part. */
const BUCKET_BYTES = MEMBERS_PART_BYTES - HEAD_ROOM;

const ENCODER = new TextEncoder();
const COMMA = 0x2c;
const WHO_HEAD = ENCODER.encode('{"type":"who","members":[');
const END = ENCODER.encode("]}");
const WHO_MORE = ENCODER.encode('],"more":true}');
const WHO_LAST = ENCODER.encode('],"more":false}');
const WELCOME_MORE = ENCODER.encode('],"members_more":true}');

/**
 * One member: its JSON, made once, as a string. (A `Uint8Array` of its own per member, with its
 * backing store, cost 1.4 KiB of RSS per member; the string and its entry about 0.9 KiB. The
 * bytes live in the bucket's body, shared by its members.)
 */
interface Entry {
  readonly json: string;
  /** Its UTF-8 bytes. */
  readonly size: number;
  bucket: Bucket;
}

/** Consecutive members that go out as one part. */
class Bucket {
  readonly entries = new Set<Entry>();
  /** Bytes of the entries' JSON, without commas. */
  bytes = 0;
  /** This bucket's `who` frame, once built, and whether it says `more: true`. */
  #frame: Uint8Array | null = null;
  #more = false;
  /**
   * The members' bytes, comma separated, in the first {@link Bucket.length} bytes (room to grow
   * after them), kept up to date as members join at the end; `null` once one leaves (built again
   * when next needed). A join then costs one member's encoding, not the whole bucket's.
   */
  #body: Uint8Array | null = null;

  /** Bytes of the members as the inside of a JSON array (with the commas). */
  get length(): number {
    return this.bytes + Math.max(0, this.entries.size - 1);
  }

  /** `entry` was added at the end (and counted in {@link Bucket.bytes}). */
  appended(entry: Entry): void {
    this.#frame = null;
    const body = this.#body;
    if (body === null) return;
    const end = this.length;
    if (end > body.length) {
      const grown = new Uint8Array(Math.max(end, Math.min(BUCKET_BYTES, 2 * body.length)));
      grown.set(body.subarray(0, end - entry.size - (this.entries.size > 1 ? 1 : 0)));
      this.#body = grown;
    }
    const at = end - entry.size;
    if (this.entries.size > 1) this.#body![at - 1] = COMMA;
    ENCODER.encodeInto(entry.json, this.#body!.subarray(at, end));
  }

  /** Members left or moved: the bytes are built again when next asked for. */
  changed(): void {
    this.#frame = null;
    this.#body = null;
  }

  /** This bucket's members as a `who` part; shared (never changed once built). */
  whoFrame(more: boolean): Uint8Array {
    if (this.#frame === null || this.#more !== more) {
      this.#frame = frameOf(WHO_HEAD, [this], more ? WHO_MORE : WHO_LAST);
      this.#more = more;
    }
    return this.#frame;
  }

  /** The members, as they lie inside the `who` frame (a view of it). */
  body(): Uint8Array {
    const frame = this.#frame ?? this.whoFrame(true);
    const start = HEADER_SIZE + WHO_HEAD.length;
    return frame.subarray(start, start + this.length);
  }

  /** Copies the members (comma separated) into `out` at `at`; returns the end. */
  copyInto(out: Uint8Array, at: number): number {
    const length = this.length;
    out.set(this.#frame !== null ? this.body() : this.#bytes().subarray(0, length), at);
    return at + length;
  }

  /** {@link Bucket.#body}, built if it is not. */
  #bytes(): Uint8Array {
    if (this.#body !== null) return this.#body;
    const body = new Uint8Array(this.length);
    let at = 0;
    for (const entry of this.entries) {
      if (at > 0) body[at++] = COMMA;
      ENCODER.encodeInto(entry.json, body.subarray(at, at + entry.size));
      at += entry.size;
    }
    return this.#body = body;
  }
}

/** A frame of `head`, the members of `buckets` (comma separated) and `tail`. */
function frameOf(head: Uint8Array, buckets: readonly Bucket[], tail: Uint8Array): Uint8Array {
  let length = head.length + tail.length;
  let filled = 0;
  for (const bucket of buckets) {
    if (bucket.entries.size === 0) continue;
    length += bucket.length + (filled++ > 0 ? 1 : 0);
  }
  const out = new Uint8Array(HEADER_SIZE + length);
  new DataView(out.buffer).setUint32(0, length);
  out.set(head, HEADER_SIZE);
  let at = HEADER_SIZE + head.length;
  filled = 0;
  for (const bucket of buckets) {
    if (bucket.entries.size === 0) continue;
    if (filled++ > 0) out[at++] = COMMA;
    at = bucket.copyInto(out, at);
  }
  out.set(tail, at);
  return out;
}

/** Bytes of `text` in UTF-8 (lone surrogates count as U+FFFD, as `TextEncoder` writes them). */
function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) continue;
    if (code < 0x800) bytes += 1;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++; // a pair: 4 bytes for its 2 units
        bytes += 2;
        continue;
      }
      bytes += 2;
    } else bytes += 2;
  }
  return bytes;
}

/** Members in the order they joined, each made into JSON once, in buckets of one part each. */
export class MemberList {
  #entries = new Map<number, Entry>();
  #buckets: Bucket[] = [];

  /** Members in the list. */
  get size(): number {
    return this.#entries.size;
  }

  /** Whether a member with this id is in the list. */
  has(id: number): boolean {
    return this.#entries.has(id);
  }

  /** Bytes of the members as the inside of a JSON array (with the commas). */
  get length(): number {
    let length = 0;
    for (const bucket of this.#buckets) length += bucket.length + 1;
    return Math.max(0, length - 1);
  }

  /** The buckets, in order (none is empty). */
  get buckets(): readonly Bucket[] {
    return this.#buckets;
  }

  /** Adds a member at the end (its JSON made now); false if its id is in the list already. */
  add(member: MemberInfo): boolean {
    if (this.#entries.has(member.id)) return false;
    const json = JSON.stringify(memberJson(member));
    const size = utf8Length(json);
    const buckets = this.#buckets;
    let bucket = buckets[buckets.length - 1];
    if (bucket === undefined || bucket.length + 1 + size > BUCKET_BYTES) {
      bucket = new Bucket();
      buckets.push(bucket);
    }
    const entry: Entry = { json, size, bucket };
    bucket.entries.add(entry);
    bucket.bytes += size;
    bucket.appended(entry);
    this.#entries.set(member.id, entry);
    return true;
  }

  /** Removes a member; false if it was not in the list. */
  delete(id: number): boolean {
    const entry = this.#entries.get(id);
    if (entry === undefined) return false;
    this.#entries.delete(id);
    const bucket = entry.bucket;
    bucket.entries.delete(entry);
    bucket.bytes -= entry.size;
    bucket.changed();
    const buckets = this.#buckets;
    const at = buckets.indexOf(bucket);
    if (bucket.entries.size === 0) {
      buckets.splice(at, 1);
      return true;
    }
    // Any two neighbours hold more than one part together, so the parts stay nearly full.
    const next = buckets[at + 1];
    if (next !== undefined && bucket.length + 1 + next.length <= BUCKET_BYTES) {
      this.#merge(bucket, next);
      buckets.splice(at + 1, 1);
    }
    const previous = buckets[at - 1];
    if (previous !== undefined && previous.length + 1 + bucket.length <= BUCKET_BYTES) {
      this.#merge(previous, bucket);
      buckets.splice(at, 1);
    }
    return true;
  }

  /** Moves the members of `from` to the end of `into`. */
  #merge(into: Bucket, from: Bucket): void {
    for (const entry of from.entries) {
      entry.bucket = into;
      into.entries.add(entry);
    }
    into.bytes += from.bytes;
    into.changed();
  }
}

/**
 * Encodes a member list (the members of `lists`, in order) as the frames that carry it:
 *
 * - it fits in one frame of at most {@link MEMBERS_PART_BYTES}: that frame, `head` + members +
 *   `]}`, exactly as `JSON.stringify` would give it;
 * - else: `head` + the first part + `moreTail` (when `head` leaves room for a part, else no
 *   member), then one `{"type":"who","members":[…],"more":true}` per further part, the last one
 *   with `"more":false`.
 *
 * @param head the frame's JSON up to and including `[` of its member array
 * @param moreTail what closes the first frame when parts follow
 */
export function encodeMemberList(
  lists: readonly MemberList[],
  head: Uint8Array,
  moreTail: Uint8Array,
): Uint8Array[] {
  const buckets = lists.flatMap((list) => list.buckets);
  const whole = wholeFrame(buckets, head);
  if (whole) return [whole];
  const frames: Uint8Array[] = [];
  let rest = buckets;
  if (head.length + moreTail.length <= HEAD_ROOM) {
    // Copied from the first bucket's own frame, built once for every login that follows.
    buckets[0].body();
    frames.push(frameOf(head, buckets.slice(0, 1), moreTail));
    rest = buckets.slice(1);
  } else {
    frames.push(frameOf(head, [], moreTail));
  }
  for (let i = 0; i < rest.length; i++) frames.push(rest[i].whoFrame(i < rest.length - 1));
  return frames;
}

/** The frames of the answer to `who`: one, or parts (see {@link encodeMemberList}). */
export function encodeWhoList(lists: readonly MemberList[]): Uint8Array[] {
  const buckets = lists.flatMap((list) => list.buckets);
  const whole = wholeFrame(buckets, WHO_HEAD);
  if (whole) return [whole];
  // In parts, a `who` is every bucket's own shared frame, the first one included.
  return buckets.map((bucket, i) => bucket.whoFrame(i < buckets.length - 1));
}

/** The list as one frame, `head` + members + `]}`, if that fits in a part; else null. */
function wholeFrame(buckets: readonly Bucket[], head: Uint8Array): Uint8Array | null {
  let length = 0;
  for (const bucket of buckets) length += bucket.length + 1;
  length = Math.max(0, length - 1);
  return head.length + length + END.length <= MEMBERS_PART_BYTES
    ? frameOf(head, buckets, END)
    : null;
}

/**
 * The frames of a `welcome` (its fields in `welcome`) with the member list of `lists`: one frame,
 * or the welcome with the first part and `"members_more":true`, then `who` parts.
 */
export function encodeWelcomeList(
  welcome: JsonObject,
  lists: readonly MemberList[],
): Uint8Array[] {
  const json = JSON.stringify(welcome);
  // `members` goes last, as `JSON.stringify` puts a key added last.
  const head = ENCODER.encode(`${json.slice(0, -1)}${json.length > 2 ? "," : ""}"members":[`);
  return encodeMemberList(lists, head, WELCOME_MORE);
}
