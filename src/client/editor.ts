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
 * Keys: Enter sends; Backspace, Delete, Left/Right, Home/End (and Ctrl-A/E/B/F), Ctrl-U/K/W
 * edit; Up/Down walk through the lines sent; Ctrl-C clears a line with text and quits on an
 * empty one; Ctrl-D quits on an empty line (deletes under the cursor otherwise). Each line of a
 * (bracketed) paste is sent as it was typed.
 *
 * @module
 */

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

// Shown as `?` in the input line: controls that could move the cursor or reorder the text.
// deno-lint-ignore no-control-regex
const UNSAFE_SHOWN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/;
const ZERO_WIDTH = /^[\p{Mn}\p{Me}\u200b\u200d\ufe0f]$/u;

/** Columns a character takes on a terminal: 0 (combining), 2 (wide: CJK, emoji) or 1. */
export function charWidth(char: string): number {
  const code = char.codePointAt(0)!;
  if (code < 0x300) return 1;
  if (ZERO_WIDTH.test(char)) return 0;
  if (
    (code >= 0x1100 && code <= 0x115f) || (code >= 0x2e80 && code <= 0x303e) ||
    (code >= 0x3041 && code <= 0x33ff) || (code >= 0x3400 && code <= 0x4dbf) ||
    (code >= 0x4e00 && code <= 0x9fff) || (code >= 0xa000 && code <= 0xa4cf) ||
    (code >= 0xac00 && code <= 0xd7a3) || (code >= 0xf900 && code <= 0xfaff) ||
    (code >= 0xfe30 && code <= 0xfe4f) || (code >= 0xff00 && code <= 0xff60) ||
    (code >= 0xffe0 && code <= 0xffe6) || (code >= 0x1f300 && code <= 0x1f64f) ||
    (code >= 0x1f900 && code <= 0x1f9ff) || (code >= 0x20000 && code <= 0x3fffd)
  ) {
    return 2;
  }
  return 1;
}

function shown(char: string): string {
  if (char === "\t") return " ";
  return UNSAFE_SHOWN.test(char) ? "?" : char;
}

/** Length in UTF-16 units of the character ending at `index`. */
function lengthBefore(text: string, index: number): number {
  const low = text.charCodeAt(index - 1);
  const high = text.charCodeAt(index - 2);
  return index >= 2 && low >= 0xdc00 && low <= 0xdfff && high >= 0xd800 && high <= 0xdbff ? 2 : 1;
}

/** Length in UTF-16 units of the character starting at `index`. */
function lengthAt(text: string, index: number): number {
  const code = text.codePointAt(index);
  return code !== undefined && code > 0xffff ? 2 : 1;
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
  #lastWasCr = false;
  /** Whether the line is on screen. */
  #drawn = false;
  /** Rows from the first row of the prompt to the cursor, as drawn. */
  #cursorRow = 0;
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
    const place = (char: string, width: number) => {
      if (width > 0 && col + width > columns) {
        row++;
        col = 0;
      }
      out += char;
      col += width;
    };
    for (const char of this.#prompt) place(char, charWidth(char));
    if (start > 0) place("…", 1);
    for (let i = start; i < end;) {
      if (i === this.#cursor) cursor = col >= columns ? { row: row + 1, col: 0 } : { row, col };
      const char = String.fromCodePoint(this.#line.codePointAt(i)!);
      place(shown(char), charWidth(char));
      i += char.length;
    }
    if (end < this.#line.length) place("…", 1);
    if (col >= columns) {
      // The terminal holds the cursor on the full row until the next character: move it on.
      out += "\r\n";
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
      if (this.#escape !== undefined) {
        this.#escape += char;
        const action = this.#readEscape();
        if (action) {
          flush();
          if (action()) dirty = true;
        }
        continue;
      }
      const code = char.charCodeAt(0);
      const cr = this.#lastWasCr;
      this.#lastWasCr = char === "\r";
      if (char === "\n" && cr) continue; // CRLF is one Enter
      if ((code >= 0x20 && code !== 0x7f) || char === "\t") {
        typed += char;
        continue;
      }
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
    for (const char of text) {
      const width = charWidth(char);
      if (width > 0 && col + width > columns) {
        row++;
        col = 0;
      }
      out += shown(char);
      col += width;
      if (col >= columns) {
        out += "\r\n";
        row++;
        col = 0;
      }
      // Past the room for the whole line: a window of it is drawn instead.
      if (row * columns + col >= cells) return false;
    }
    this.#write(out);
    this.#end = { row, col, width: columns };
    this.#cursorRow = row;
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
      this.#escape = undefined; // Alt+key: ignored
      return () => false;
    }
    const last = seq.charCodeAt(seq.length - 1);
    if (seq[1] === "[" && !(last >= 0x40 && last <= 0x7e)) {
      if (seq.length > 16) this.#escape = undefined;
      return undefined;
    }
    this.#escape = undefined;
    const key = seq.slice(2);
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
      default: // bracketed paste markers (200~, 201~) and keys without a use here
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
    for (const char of this.#prompt) budget -= charWidth(char);
    budget = Math.max(4, budget);
    const line = this.#line;
    // Walk back from the cursor, then forward, until the budget is spent.
    let start = this.#cursor;
    let used = 0;
    while (start > 0) {
      const length = lengthBefore(line, start);
      const width = charWidth(line.slice(start - length, start));
      if (used + width > budget - 1) break;
      used += width;
      start -= length;
    }
    let end = this.#cursor;
    while (end < line.length) {
      const length = lengthAt(line, end);
      const width = charWidth(line.slice(end, end + length));
      if (used + width > budget - (start > 0 ? 2 : 1)) break;
      used += width;
      end += length;
    }
    return { start, end };
  }
}
