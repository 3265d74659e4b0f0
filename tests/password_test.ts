import assert from "node:assert/strict";
import { PasswordError, PasswordVerifier, readPassword } from "../src/server/password.ts";
import { PromptCancelled, promptHidden } from "../src/common/prompt.ts";

Deno.test("PasswordVerifier accepts only the password", async () => {
  const verifier = await PasswordVerifier.create("s3cret");
  assert.equal(await verifier.verify("s3cret"), true);
  assert.equal(await verifier.verify("s3cret "), false);
  assert.equal(await verifier.verify(""), false);
  assert.equal(JSON.stringify(verifier).includes("s3cret"), false);
  await assert.rejects(PasswordVerifier.create(""), PasswordError);
});

Deno.test("readPassword prefers --password-file, then the environment, then the prompt", async () => {
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(file, "from-file\r\n");
    const prompt = () => Promise.resolve("from-prompt");
    assert.equal(await readPassword({ env: "from-env", file, prompt }), "from-file");
    assert.equal(await readPassword({ env: "from-env", prompt }), "from-env");
    assert.equal(await readPassword({ file, prompt }), "from-file");
    assert.equal(await readPassword({ prompt }), "from-prompt");
    await assert.rejects(readPassword({ file: `${file}.missing` }), /Cannot read password file/);
    await assert.rejects(readPassword({ env: "", prompt }), /empty password/);
  } finally {
    await Deno.remove(file);
  }
});

/** A fake terminal that feeds `input` in small chunks and records raw-mode changes. */
function fakeTerminal(input: string) {
  const data = new TextEncoder().encode(input);
  let offset = 0;
  const modes: boolean[] = [];
  let printed = "";
  return {
    modes,
    printed: () => printed,
    setRaw: (mode: boolean) => void modes.push(mode),
    write: (text: string) => void (printed += text),
    read(buffer: Uint8Array): Promise<number | null> {
      if (offset >= data.length) return Promise.resolve(null);
      const n = Math.min(2, data.length - offset, buffer.length);
      buffer.set(data.subarray(offset, offset + n));
      offset += n;
      return Promise.resolve(n);
    },
  };
}

Deno.test("promptHidden reads without echo, edits with backspace and restores the terminal", async () => {
  const tty = fakeTerminal("pässx\x7fwörd\x1b[D\r");
  assert.equal(await promptHidden("Enter server password: ", tty), "pässwörd");
  assert.deepEqual(tty.modes, [true, false]);
  // From the start of the line, erasing whatever is there (e.g. a progress line).
  assert.equal(tty.printed(), "\r\x1b[KEnter server password: \n");
});

Deno.test("promptHidden is cancelled by Ctrl-C and restores the terminal", async () => {
  const tty = fakeTerminal("abc\x03");
  await assert.rejects(
    promptHidden("? ", tty),
    (error) => error instanceof PromptCancelled && error.interrupted,
  );
  assert.deepEqual(tty.modes, [true, false]);
});
