/**
 * The interactive client's input line: a small line editor that owns its rows on the screen, so
 * text printed above it (incoming messages) never collides with it, however far the line wraps.
 *
 * It keeps track of where it drew the prompt and the line (the terminal wraps long lines onto
 * more rows), so it can erase exactly those rows, let a message be printed, and draw the line
 * again below it. Input is handled a chunk at a time (a paste arrives as a few large chunks),
 * and drawing costs at most a screenful of characters, so a long paste takes time linear in its
 * length. A line longer than half the screen shows the part around the cursor, with `…` where
 * text is hidden.
 *
 * Keys: Enter sends; Backspace, Delete, Left/Right, Home/End (and Ctrl-A/E/B/F), Alt-Left/Right
 * (and Ctrl-Left/Right, Alt-B/F: a word), Ctrl-U/K/W edit; Up/Down walk through the lines sent;
 * Ctrl-C clears a line with text and quits on an empty one; Ctrl-D quits on an empty line
 * (deletes under the cursor otherwise). Each line of a bracketed paste is sent as a line; inside
 * a paste no other control character is a command (they are dropped), so a pasted Ctrl-C or
 * Ctrl-D never quits. A lone Esc is a key of its own once {@link LineEditor.expireEscape} says
 * no more of a sequence came in time.
 *
 * Widths: the cursor moves and the text wraps by grapheme cluster (an emoji ZWJ sequence, a
 * letter with its combining marks, a flag), each as wide as `npm:string-width` says (East Asian
 * Wide and Fullwidth, emoji presentation: 2 columns; marks and zero-width characters: 0), which
 * is what terminals draw.
 *
 * @module
 */

import stringWidth from "string-width";

/** What the editor asks of the terminal. */
export interface EditorScreen {
  /** Terminal width in columns. */
  columns(): number;
  /** Terminal height in rows. */
  rows(): number;
}

/** What a chunk of input asked for, in order. */
export type EditorEvent =
  | { kind: "line"; text: string }
  | { kind: "quit"; key: "Ctrl-C" | "Ctrl-D" };

const ESC = "\x1b";
/** Lines kept for Up/Down. */
const HISTORY_SIZE = 100;
/** UTF-16 units looked at around an index to find the grapheme cluster there. */
const CLUSTER_SPAN = 64;

// Shown as `?` in the input line: controls that could move the cursor or reorder the text.
// deno-lint-ignore no-control-regex
const UNSAFE_SHOWN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/;
const UNSAFE_SHOWN_ALL = new RegExp(UNSAFE_SHOWN.source, "g");
const SEGMENTER = new Intl.Segmenter();
/**
 * Written when a row is full: the terminal keeps the cursor on the full row until the next
 * character, so a space starts the next row (as a wrap, not a new line: a terminal that rewraps
 * on resize keeps the text one line) and `\r` goes back over it, to be overwritten.
 */
const WRAP = " \r";

/** Whether UTF-16 unit `code` is printable ASCII (always a grapheme cluster of its own, 1 column). */
function isPlainAscii(code: number): boolean {
  return code >= 0x20 && code < 0x7f;
}

/**
 * Columns a grapheme cluster (or any text without controls) takes on a terminal: 0 (combining
 * marks, zero-width characters), 2 (East Asian Wide or Fullwidth, emoji presentation, e.g. 🚀,
 * 中, 👨‍👩‍👧) or 1 (e.g. a, é, 🖥 without a variation selector), added up over the clusters.
 */
export function textWidth(text: string): number {
  if (text.length === 1 && isPlainAscii(text.charCodeAt(0))) return 1;
  return stringWidth(text);
}

/** The cluster as drawn (controls as `?`, a tab as a space) and its width in columns. */
function shown(cluster: string): { text: string; width: number } {
  if (cluster.length === 1 && isPlainAscii(cluster.charCodeAt(0))) {
    return { text: cluster, width: 1 };
  }
  if (cluster === "\t") return { text: " ", width: 1 };
  const text = UNSAFE_SHOWN.test(cluster) ? cluster.replace(UNSAFE_SHOWN_ALL, "?") : cluster;
  return { text, width: stringWidth(text) };
}

/** Length in UTF-16 units of the grapheme cluster ending at `index`. */
function lengthBefore(text: string, index: number): number {
  if (index <= 0) return 0;
  if (isPlainAscii(text.charCodeAt(index - 1))) return 1; // nothing extends an ASCII character
  const from = Math.max(0, index - CLUSTER_SPAN);
  let last = 1;
  for (const { segment } of SEGMENTER.segment(text.slice(from, index))) last = segment.length;
  return last;
}

/** Length in UTF-16 units of the grapheme cluster starting at `index`. */
function lengthAt(text: string, index: number): number {
  if (index >= text.length) return 0;
  const next = text.charCodeAt(index + 1);
  if (isPlainAscii(text.charCodeAt(index)) && (index + 1 === text.length || next < 0x300)) {
    return 1;
  }
  const first = SEGMENTER.segment(text.slice(index, index + CLUSTER_SPAN))[Symbol.iterator]()
    .next();
  return first.done ? 1 : first.value.segment.length;
}

/** The input line, its history, and what is drawn of it. Produces terminal output as text. */
export class LineEditor {
  #screen: EditorScreen;
  #prompt: string;
  #line = "";
  #cursor = 0;
  #history: string[] = [];
  /** Index into the history while walking it; `history.length` for the line being typed. */
  #walk = 0;
  #draft = "";
  /** Escape sequence being read (across chunks), or `undefined`. */
  #escape?: string;
  /** Whether the sequence being read came after an extra Esc (Alt held, on some terminals). */
  #alt = false;
  /** Whether a bracketed paste is coming in (between `ESC [200~` and `ESC [201~`). */
  #pasting = false;
  #lastWasCr = false;
  /** Whether the line is on screen. */
  #drawn = false;
  /** Rows from the first row of the prompt to the cursor, as drawn. */
  #cursorRow = 0;
  /** The cursor's column, as drawn. */
  #cursorCol = 0;
  /** Where the end of the drawn text is (for typing at the end without redrawing). */
  #end = { row: 0, col: 0, width: 0 };
  /** Whether the whole line is drawn (not a window of it). */
  #whole = true;

  #write: (text: string) => void;
  #closed = false;

  /** `write` puts text on the terminal (in raw mode: lines end with `\r\n`). */
  constructor(prompt: string, screen: EditorScreen, write: (text: string) => void) {
    this.#prompt = prompt;
    this.#screen = screen;
    this.#write = write;
  }

  /** The line being typed. */
  get line(): string {
    return this.#line;
  }

  /**
   * Whether a lone Esc was read: the caller should call {@link expireEscape} if nothing more
   * comes in a short while (the rest of an arrow key's sequence may still be on its way).
   */
  get escapePending(): boolean {
    return this.#escape === ESC;
  }

  /** Takes a lone Esc read earlier as the Esc key (which does nothing), not as a prefix. */
  expireEscape(): void {
    if (this.#escape === ESC) {
      this.#escape = undefined;
      this.#alt = false;
    }
  }

  /**
   * Output that draws the line again after the terminal changed width. The terminal has rewrapped
   * the rows drawn (as tmux, VTE, kitty, iTerm2 and Windows Terminal do), so the cursor's row is
   * now its place in the text divided by the new width.
   */
  resize(): string {
    const columns = Math.max(2, this.#screen.columns());
    if (this.#drawn && columns !== this.#end.width) {
      this.#cursorRow = Math.floor(
        (this.#cursorRow * this.#end.width + this.#cursorCol) / columns,
      );
    }
    return this.draw();
  }

  /** Output that erases the drawn prompt and line, leaving the cursor where they began. */
  hide(): string {
    if (!this.#drawn) return "";
    this.#drawn = false;
    const up = this.#cursorRow > 0 ? `${ESC}[${this.#cursorRow}A` : "";
    this.#cursorRow = 0;
    return `${up}\r${ESC}[J`;
  }

  /** Output that (re)draws the prompt and the line, with the cursor in place. */
  draw(): string {
    const columns = Math.max(2, this.#screen.columns());
    const maxRows = Math.max(1, Math.floor(this.#screen.rows() / 2));
    const { start, end } = this.#window(columns * maxRows - 1);
    this.#whole = start === 0 && end === this.#line.length;
    let out = this.hide();
    let row = 0;
    let col = 0;
    let cursor = { row: 0, col: 0 };
    const place = ({ text, width }: { text: string; width: number }) => {
      if (width > 0 && col + width > columns) {
        row++;
        col = 0;
      }
      out += text;
      col += width;
    };
    for (const { segment } of SEGMENTER.segment(this.#prompt)) place(shown(segment));
    if (start > 0) place({ text: "…", width: 1 });
    for (let i = start; i < end;) {
      if (i === this.#cursor) cursor = col >= columns ? { row: row + 1, col: 0 } : { row, col };
      const length = lengthAt(this.#line, i);
      place(shown(this.#line.slice(i, i + length)));
      i += length;
    }
    if (end < this.#line.length) place({ text: "…", width: 1 });
    if (col >= columns) {
      out += WRAP;
      row++;
      col = 0;
    }
    if (this.#cursor >= end) cursor = { row, col };
    if (row > cursor.row) out += `${ESC}[${row - cursor.row}A`;
    if (row > cursor.row || col !== cursor.col) {
      out += `\r${cursor.col > 0 ? `${ESC}[${cursor.col}C` : ""}`;
    }
    this.#end = { row, col, width: columns };
    this.#cursorRow = cursor.row;
    this.#cursorCol = cursor.col;
    this.#drawn = true;
    return out;
  }

  /**
   * Handles a chunk of typed (or pasted) text, writing its effect on the screen and calling
   * `onEvent` for each line entered and for a request to quit (after which the rest of the
   * chunk is ignored). When `onEvent` gets a line, the input line is already off the screen: the
   * caller may {@link print} above it; it is drawn again (empty) afterwards.
   */
  feed(text: string, onEvent: (event: EditorEvent) => void): void {
    let dirty = false;
    let typed = "";
    const flush = () => {
      if (typed !== "" && !this.#insert(typed, !dirty)) dirty = true;
      typed = "";
    };
    for (let i = 0; i < text.length; i++) {
      const char = text[i];
      // In a paste, an Esc that starts no CSI sequence is dropped and what follows it is text.
      const pastedEsc = this.#pasting && this.#escape === ESC && char !== "[";
      if (this.#escape !== undefined && !pastedEsc) {
        this.#escape += char;
        const action = this.#readEscape();
        if (action) {
          flush();
          if (action()) dirty = true;
        }
        continue;
      }
      if (pastedEsc) this.#escape = undefined;
      const code = char.charCodeAt(0);
      const cr = this.#lastWasCr;
      this.#lastWasCr = char === "\r";
      if (char === "\n" && cr) continue; // CRLF is one Enter
      if ((code >= 0x20 && code !== 0x7f) || char === "\t") {
        typed += char;
        continue;
      }
      // Pasted controls other than line ends (and the Esc of the paste's end) are not keys.
      if (this.#pasting && char !== "\r" && char !== "\n" && char !== ESC) continue;
      flush();
      if (char === "\r" || char === "\n") {
        const line = this.#line;
        this.#write(this.hide());
        this.#line = "";
        this.#cursor = 0;
        this.#remember(line);
        dirty = false;
        onEvent({ kind: "line", text: line });
        if (!this.#drawn && !this.#closed) this.#write(this.draw());
      } else if (char === ESC) {
        this.#escape = ESC;
      } else {
        const handled = this.#control(code, onEvent);
        if (handled === "quit") return;
        if (handled) dirty = true;
      }
    }
    flush();
    if (dirty && !this.#closed) this.#write(this.draw());
  }

  /** Prints `text` (lines) above the input line, which is drawn again below it. */
  print(text: string): void {
    if (this.#closed) return;
    this.#write(`${this.hide()}${text.replaceAll("\n", "\r\n")}\r\n${this.draw()}`);
  }

  /** Takes the input line off the screen for good. */
  close(): void {
    if (this.#closed) return;
    this.#write(this.hide());
    this.#closed = true;
  }

  /**
   * Inserts `text` at the cursor. Typing at the end of a line drawn whole just writes the
   * characters (when `fast` allows it); returns false when the line must be drawn again.
   */
  #insert(text: string, fast: boolean): boolean {
    const atEnd = this.#cursor === this.#line.length;
    // Text that may join the cluster before it (a combining mark, a ZWJ) is drawn again whole.
    if (!isPlainAscii(text.charCodeAt(0))) fast = false;
    this.#line = this.#line.slice(0, this.#cursor) + text + this.#line.slice(this.#cursor);
    this.#cursor += text.length;
    this.#walk = this.#history.length;
    const columns = Math.max(2, this.#screen.columns());
    if (!fast || !atEnd || !this.#whole || !this.#drawn || columns !== this.#end.width) {
      return false;
    }
    const cells = columns * Math.max(1, Math.floor(this.#screen.rows() / 2)) - 1;
    let { row, col } = this.#end;
    let out = "";
    for (let i = 0; i < text.length;) {
      const length = lengthAt(text, i);
      const { text: drawn, width } = shown(text.slice(i, i + length));
      i += length;
      if (width > 0 && col + width > columns) {
        row++;
        col = 0;
      }
      out += drawn;
      col += width;
      if (col >= columns) {
        out += WRAP;
        row++;
        col = 0;
      }
      // Past the room for the whole line: a window of it is drawn instead.
      if (row * columns + col >= cells) return false;
    }
    this.#write(out);
    this.#end = { row, col, width: columns };
    this.#cursorRow = row;
    this.#cursorCol = col;
    return true;
  }

  /** Handles a control key; returns whether the line must be drawn again, or "quit". */
  #control(code: number, onEvent: (event: EditorEvent) => void): boolean | "quit" {
    switch (code) {
      case 0x03: // Ctrl-C: clear the line, or quit on an empty one
        if (this.#line === "") {
          onEvent({ kind: "quit", key: "Ctrl-C" });
          return "quit";
        }
        this.#line = "";
        this.#cursor = 0;
        this.#walk = this.#history.length;
        return true;
      case 0x04: // Ctrl-D: quit on an empty line, else delete under the cursor
        if (this.#line === "") {
          onEvent({ kind: "quit", key: "Ctrl-D" });
          return "quit";
        }
        return this.#deleteForward();
      case 0x7f:
      case 0x08:
        return this.#deleteBack();
      case 0x01:
        return this.#moveTo(0);
      case 0x05:
        return this.#moveTo(this.#line.length);
      case 0x02:
        return this.#left();
      case 0x06:
        return this.#right();
      case 0x0b: // Ctrl-K
        this.#line = this.#line.slice(0, this.#cursor);
        return true;
      case 0x15: // Ctrl-U
        this.#line = this.#line.slice(this.#cursor);
        this.#cursor = 0;
        return true;
      case 0x17: { // Ctrl-W
        const before = this.#line.slice(0, this.#cursor).replace(/\S*\s*$/, "");
        this.#line = before + this.#line.slice(this.#cursor);
        this.#cursor = before.length;
        return true;
      }
      case 0x0c: // Ctrl-L
        return true;
      default:
        return false;
    }
  }

  /** Reads the escape sequence so far; returns its action once complete. */
  #readEscape(): (() => boolean) | undefined {
    const seq = this.#escape!;
    if (seq.length === 2) {
      if (seq[1] === "[" || seq[1] === "O") return undefined;
      if (seq[1] === ESC && !this.#alt) {
        // Esc before a sequence: Alt with that key, as some terminals send Alt-Left.
        this.#escape = ESC;
        this.#alt = true;
        return undefined;
      }
      this.#escape = undefined;
      this.#alt = false;
      if (seq[1] === "b") return () => this.#wordLeft();
      if (seq[1] === "f") return () => this.#wordRight();
      return () => false; // other Alt+key: ignored
    }
    const last = seq.charCodeAt(seq.length - 1);
    if (seq[1] === "[" && !(last >= 0x40 && last <= 0x7e)) {
      if (seq.length > 16) this.#escape = undefined;
      return undefined;
    }
    this.#escape = undefined;
    const key = seq.slice(2);
    const alt = this.#alt;
    this.#alt = false;
    if (this.#pasting) {
      if (key === "201~") this.#pasting = false;
      return () => false; // no key inside a paste
    }
    if (alt || key === "1;3D" || key === "1;5D" || key === "1;3C" || key === "1;5C") {
      if (key.endsWith("D")) return () => this.#wordLeft();
      if (key.endsWith("C")) return () => this.#wordRight();
      return () => false;
    }
    switch (key) {
      case "A":
        return () => this.#walkHistory(-1);
      case "B":
        return () => this.#walkHistory(1);
      case "C":
        return () => this.#right();
      case "D":
        return () => this.#left();
      case "H":
      case "1~":
      case "7~":
        return () => this.#moveTo(0);
      case "F":
      case "4~":
      case "8~":
        return () => this.#moveTo(this.#line.length);
      case "3~":
        return () => this.#deleteForward();
      case "200~":
        this.#pasting = true;
        return () => false;
      default: // the end of a paste without its start, and keys without a use here
        return () => false;
    }
  }

  #left(): boolean {
    if (this.#cursor === 0) return false;
    this.#cursor -= lengthBefore(this.#line, this.#cursor);
    return true;
  }

  #right(): boolean {
    if (this.#cursor >= this.#line.length) return false;
    this.#cursor += lengthAt(this.#line, this.#cursor);
    return true;
  }

  #wordLeft(): boolean {
    return this.#moveTo(this.#line.slice(0, this.#cursor).replace(/\S*\s*$/, "").length);
  }

  #wordRight(): boolean {
    return this.#moveTo(this.#cursor + /^\s*\S*/.exec(this.#line.slice(this.#cursor))![0].length);
  }

  #moveTo(index: number): boolean {
    this.#cursor = index;
    return true;
  }

  #deleteBack(): boolean {
    if (this.#cursor === 0) return false;
    const length = lengthBefore(this.#line, this.#cursor);
    this.#line = this.#line.slice(0, this.#cursor - length) + this.#line.slice(this.#cursor);
    this.#cursor -= length;
    return true;
  }

  #deleteForward(): boolean {
    if (this.#cursor >= this.#line.length) return false;
    const length = lengthAt(this.#line, this.#cursor);
    this.#line = this.#line.slice(0, this.#cursor) + this.#line.slice(this.#cursor + length);
    return true;
  }

  #remember(line: string): void {
    if (line.trim() !== "" && this.#history.at(-1) !== line) {
      this.#history.push(line);
      if (this.#history.length > HISTORY_SIZE) this.#history.shift();
    }
    this.#walk = this.#history.length;
    this.#draft = "";
  }

  #walkHistory(step: number): boolean {
    const next = this.#walk + step;
    if (next < 0 || next > this.#history.length) return false;
    if (this.#walk === this.#history.length) this.#draft = this.#line;
    this.#walk = next;
    this.#line = next === this.#history.length ? this.#draft : this.#history[next];
    this.#cursor = this.#line.length;
    return true;
  }

  /** The part of the line shown: all of it if it fits in `cells`, else a window on the cursor. */
  #window(cells: number): { start: number; end: number } {
    let budget = cells;
    budget -= textWidth(this.#prompt);
    budget = Math.max(4, budget);
    const line = this.#line;
    // Walk back from the cursor, then forward, until the budget is spent.
    let start = this.#cursor;
    let used = 0;
    while (start > 0) {
      const length = lengthBefore(line, start);
      const width = shown(line.slice(start - length, start)).width;
      if (used + width > budget - 1) break;
      used += width;
      start -= length;
    }
    let end = this.#cursor;
    while (end < line.length) {
      const length = lengthAt(line, end);
      const width = shown(line.slice(end, end + length)).width;
      if (used + width > budget - (start > 0 ? 2 : 1)) break;
      used += width;
      end += length;
    }
    return { start, end };
  }
}
