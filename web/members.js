/**
 * Member lists sent in parts. A server sends a list that does not fit in one frame as a
 * `welcome` with `"members_more":true` (or a `who` with `"more":true`) holding the first part,
 * then `who` frames with `"more":true`, and a last one with `"more":false`. A `welcome` or `who`
 * without those fields is a whole list by itself.
 *
 * Plain JavaScript, no DOM: the page (app.js) draws the lists it completes.
 *
 * @module
 */

/** Most members a list assembled from parts keeps (a server that never ends one cannot exhaust memory). */
export const MAX_LIST_MEMBERS = 200_000;
/** Longest name (UTF-16 units: 64 characters of up to two each) a kept member may have. */
const MAX_NAME_UNITS = 128;

/** Whether a raw member is small enough to keep while a list is assembled. */
function small(member) {
  return typeof member === "object" && member !== null && typeof member.name === "string" &&
    member.name.length <= MAX_NAME_UNITS;
}

/** Assembles member lists; one per page, {@link MemberParts.reset} on a new connection. */
export class MemberParts {
  /** @type {unknown[] | null} */
  #members = null;

  /** Whether a list is being assembled. */
  get pending() {
    return this.#members !== null;
  }

  /** Forgets a list being assembled (its connection is gone). */
  reset() {
    this.#members = null;
  }

  /**
   * Takes a `welcome` or `who` frame; returns the (raw, unchecked) members of the list it
   * completes, or `undefined`. A list cut short by another one is dropped.
   */
  add(frame) {
    const members = Array.isArray(frame?.members) ? frame.members : undefined;
    if (frame?.type === "welcome") {
      this.#members = null;
      if (members === undefined || frame.members_more !== true) return members;
      this.#members = members.filter(small).slice(0, MAX_LIST_MEMBERS);
      return undefined;
    }
    if (frame?.type !== "who") return undefined;
    const part = members ?? [];
    if (frame.more !== true && frame.more !== false) {
      this.#members = null;
      return part;
    }
    const list = this.#members ?? [];
    for (const member of part) {
      if (list.length >= MAX_LIST_MEMBERS) break;
      if (small(member)) list.push(member);
    }
    this.#members = frame.more ? list : null;
    return frame.more ? undefined : list;
  }
}
