/**
 * The interactive client's line editor through its public API: what it draws (as terminal
 * output) and what each chunk of input asks for.
 */
import assert from "node:assert/strict";
import { type EditorEvent, LineEditor, textWidth } from "../src/client/editor.ts";

/** An editor on a `columns` x 24 screen; `out` collects what it writes, `events` what it asks. */
function editor(columns = 80) {
  const screen = { columns, rows: 24 };
  let out = "";
  const events: EditorEvent[] = [];
  const e = new LineEditor("a> ", {
    columns: () => screen.columns,
    rows: () => screen.rows,
  }, (text) => out += text);
  out += e.draw();
  return {
    e,
    screen,
    events,
    feed: (text: string) => e.feed(text, (event) => events.push(event)),
    /** What was written since the last call. */
    take: () => {
      const text = out;
      out = "";
      return text;
    },
  };
}

const lines = (events: EditorEvent[]) => events.map((e) => e.kind === "line" ? e.text : e.kind);

Deno.test("textWidth counts columns as terminals draw them", () => {
  for (const wide of ["🚀", "✅", "⭐", "🫡", "中", "Ｗ", "👨‍👩‍👧", "🇫🇷", "👍🏽", "🖥️"]) {
    assert.equal(textWidth(wide), 2, wide);
  }
  for (const narrow of ["a", "🖥", "🕊", "🌡", "é", "e\u0301", "❤"]) {
    assert.equal(textWidth(narrow), 1, narrow);
  }
  for (const zero of ["\u0301", "\u200b", "\u200d"]) assert.equal(textWidth(zero), 0);
});

Deno.test("LineEditor wraps emoji by their terminal width, so hide() goes up exactly its rows", () => {
  // "a> " + 50 narrow emoji: 53 columns, one row at 80: nothing to go up over.
  const narrow = editor();
  narrow.feed("🖥".repeat(50));
  narrow.take();
  assert.equal(narrow.e.hide(), "\r\x1b[J");
  // "a> " + 40 wide ones: 83 columns, two rows.
  const wide = editor();
  wide.feed("🚀".repeat(40));
  wide.take();
  assert.equal(wide.e.hide(), "\x1b[1A\r\x1b[J");
});

Deno.test("LineEditor moves over a grapheme cluster (ZWJ sequence, combining mark) as one", () => {
  const { feed, events } = editor();
  feed("x👨‍👩‍👧e\u0301");
  feed("\x1b[D\x08"); // Left over "é", Backspace deletes the whole family
  feed("\r");
  assert.deepEqual(lines(events), ["xe\u0301"]);
});

Deno.test("LineEditor: inside a bracketed paste, control characters are not keys", async (t) => {
  await t.step("Ctrl-D and Ctrl-C in a paste do not quit; each pasted line is sent", () => {
    const { feed, events } = editor();
    feed("\x1b[200~one\n\x04two\nthree\n\x1b[201~");
    feed("\x1b[200~four\r\n\x03\x1b[201~");
    assert.deepEqual(lines(events), ["one", "two", "three", "four"]);
    assert.equal(editorLine(feed, events), "");
  });
  await t.step("other controls are dropped; Esc in a paste is not Alt", () => {
    const { feed, events } = editor();
    feed("\x1b[200~a\x1bb\x7f\x15c\x1b[A\x1b[201~\r");
    assert.deepEqual(lines(events), ["abc"]);
  });
  await t.step("after the paste, keys work again", () => {
    const { feed, events } = editor();
    feed("\x1b[200~x\x1b[201~");
    feed("\x04");
    assert.deepEqual(lines(events), []);
    feed("\x03\x04");
    assert.deepEqual(lines(events), ["quit"]);
  });
});

/** Sends Enter; returns the line it gave. */
function editorLine(feed: (text: string) => void, events: EditorEvent[]): string {
  feed("\r");
  const last = events.at(-1)!;
  return last.kind === "line" ? last.text : last.kind;
}

Deno.test("LineEditor: Alt-Left as ESC ESC [D moves a word, inserts nothing", () => {
  const { feed, events } = editor();
  feed("one two\x1b\x1b[DX\x1b[1;5DY\x1b\x1b[CZ\r");
  assert.deepEqual(lines(events), ["one YXtwoZ"]);
});

Deno.test("LineEditor: a lone Esc, once expired, does not swallow the next key", () => {
  const { e, feed, events } = editor();
  feed("\x1b");
  assert.ok(e.escapePending);
  e.expireEscape();
  feed("x\r");
  assert.deepEqual(lines(events), ["x"]);
  // An arrow key split across reads still works when it comes in time.
  feed("ab\x1b");
  feed("[DX\r");
  assert.deepEqual(lines(events), ["x", "aXb"]);
});

Deno.test("LineEditor.resize erases the rows of the rewrapped line, not one fewer", () => {
  const { e, feed, screen, take } = editor(80);
  feed("y".repeat(100)); // 103 columns: the cursor on row 1 at 80 columns
  take();
  screen.columns = 40; // the terminal rewraps it: the cursor is on row 2 now
  const out = e.resize();
  assert.ok(out.startsWith("\x1b[2A\r\x1b[J"), JSON.stringify(out.slice(0, 20)));
});

Deno.test("LineEditor: a full row moves on with a wrap, not a new line", () => {
  const { feed, take } = editor(10);
  take();
  feed("1234567");
  assert.equal(take(), "1234567 \r");
});
