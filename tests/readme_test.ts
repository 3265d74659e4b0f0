/**
 * Every shell command in README.md is accounted for: run here as written (cheap ones), run by a
 * named test or `.ci/run`, or listed as not runnable here with the reason. A command the README
 * gains in none of these lists fails the first test, and so does a list entry the README lost.
 *
 * Commands are taken from `sh`/`bash`/`shell`/`console` blocks (every line, `\` continuations
 * joined, comments dropped), from unlabelled blocks and inline code spans whose first word is a
 * command ({@link COMMAND_WORDS}; a span that only names a tool, `openssl` or `deno run`, is not
 * one), and from the systemd unit's `Exec*=` lines and `# ... with: CMD`
 * comments.
 *
 * "As written" allows only the substitutions each entry spells out: fixed ports become 0 (4000 and
 * 4443 may be taken, and the runs are parallel), example paths such as `/etc/chat/password` become
 * temp files, `...` placeholders become the test password, and `--linger 60` becomes 2. Each runs in
 * a copy of the project ({@link projectCopy}), with `deno` on PATH being this Deno.
 */
import assert from "node:assert/strict";
import {
  commandAvailable,
  PASSWORD,
  pipeText,
  projectCopy,
  startServer,
  testCerts,
  TestClient,
  waitFor,
} from "./_helpers.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const README = Deno.readTextFileSync(`${ROOT}README.md`);

/** The first words that make an unlabelled block's line, or an inline code span, a command. */
const COMMAND_WORDS = new Set([
  "deno",
  "npx",
  "npm",
  "export",
  "echo",
  "sudo",
  "systemctl",
  "sqlite3",
  "jq",
  "openssl",
  "curl",
  "apt-get",
]);

function isCommand(text: string): boolean {
  const first = text.trim().replace(/^\$ /, "").split(/\s+/)
    .find((word) => !/^[A-Za-z_]\w*=/.test(word));
  return first !== undefined && COMMAND_WORDS.has(first);
}

/** `line` without a trailing `# comment` (a `#` after a space, outside quotes). */
function stripComment(line: string): string {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) return line.slice(0, i);
  }
  return line;
}

/** Lines with `\`-continued ones joined. */
function joinContinued(lines: string[]): string[] {
  const out: string[] = [];
  let pending = "";
  for (const line of lines) {
    if (line.endsWith("\\")) pending += `${line.slice(0, -1)} `;
    else {
      out.push(pending + line);
      pending = "";
    }
  }
  if (pending) out.push(pending);
  return out;
}

/** Every command in `markdown`, whitespace collapsed, each once, in order of appearance. */
export function readmeCommands(markdown: string): string[] {
  const commands = new Set<string>();
  const add = (command: string) => {
    const text = stripComment(command.trim().replace(/^\$ /, "")).replace(/\s+/g, " ").trim();
    if (text) commands.add(text);
  };
  const fence = /^```([\w-]*)\n([\s\S]*?)^```$/gm;
  for (const [, lang, body] of markdown.matchAll(fence)) {
    const lines = joinContinued(body.split("\n"));
    if (["sh", "bash", "shell", "console"].includes(lang)) lines.forEach(add);
    else if (lang === "") lines.filter(isCommand).forEach(add);
    else if (lang === "ini") {
      for (const line of lines) {
        const exec = /^Exec\w*=(.*)$/.exec(line);
        if (exec) add(exec[1]);
        const made = /^#.*\bwith: (.*)$/.exec(line);
        if (made && isCommand(made[1])) add(made[1]);
      }
    }
  }
  // A span naming a tool (`openssl`, `deno task`) is a mention, not a command.
  for (const [, span] of markdown.replace(fence, "").matchAll(/`([^`]+)`/g)) {
    if (isCommand(span) && !/^(\S+|deno \S+)$/.test(span.trim())) add(span);
  }
  return [...commands];
}

// --- (a) run by this file ------------------------------------------------------------------------

/** A README command run here, with the substitutions it needs. */
interface RunHere {
  /** Why it may differ from the README: each `[from, to]` must occur in the command. */
  substitute?: (dir: string) => [string, string][];
  /** Appended to the command (a server's ports). */
  append?: string;
  run(command: string): Promise<void>;
}

const PORTS = "--port 0 --web-port 0";

/** A bin dir whose `deno` is this Deno, first on PATH. */
const bin = Deno.makeTempDirSync({ prefix: "chat-readme-bin-" });
Deno.symlinkSync(Deno.execPath(), `${bin}/deno`);
globalThis.addEventListener("unload", () => Deno.removeSync(bin, { recursive: true }));
/** The environment commands run with: nothing of the test runner's but where Deno's cache is. */
const ENV: Record<string, string> = { PATH: `${bin}:${Deno.env.get("PATH") ?? ""}`, NO_COLOR: "1" };
for (const name of ["HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
  const value = Deno.env.get(name);
  if (value !== undefined) ENV[name] = value;
}

/** Runs `command` with sh in `cwd` to completion. */
async function sh(command: string, cwd: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command("sh", {
    args: ["-c", command],
    cwd,
    env: { ...ENV, ...env },
    clearEnv: true,
    stdin: "null",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/**
 * Starts the server `command` in `cwd` (its own process group), logs in once the started line (and
 * the web client's line) are out, stops it with SIGTERM and expects exit 0.
 */
async function serve(command: string, cwd: string, env: Record<string, string> = {}) {
  const child = new Deno.Command("setsid", {
    args: ["sh", "-c", `exec ${command}`],
    cwd,
    env: { ...ENV, ...env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const collecting = pipeText([child.stdout, child.stderr], (piece) => output += piece);
  const started = /server started on port -> (\d+)/;
  try {
    const up = await waitFor(() => started.test(output) && /web client at/.test(output), 30_000);
    assert.ok(up, `not started: ${command}\n${output}`);
    const { client, reply } = await TestClient.login(Number(started.exec(output)![1]));
    await client.close();
    assert.equal(reply.success, true, output);
    Deno.kill(-child.pid, "SIGTERM");
    const { code } = await child.status;
    await collecting;
    assert.equal(code, 0, `${command}\n${output}`);
  } finally {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
    await collecting;
  }
}

/** The `deno run` line `deno task start ARGS` prints when it lacks a permission. */
async function printedLine(args: string, cwd: string): Promise<string> {
  const { code, stderr } = await sh(`deno task start ${args}`, cwd, {
    CHAT_SERVER_PASSWORD: PASSWORD,
  });
  assert.equal(code, 1, stderr);
  const line = stderr.split("\n").find((line) => line.startsWith("  deno run "));
  assert.ok(line, stderr);
  return line.trim();
}

/** Runs a server command and checks it is the line the server prints for its arguments. */
async function serveAsPrinted(command: string, cwd: string) {
  const args = command.slice(command.indexOf(" main.ts ") + " main.ts ".length);
  assert.equal(await printedLine(args, cwd), command, "not the line the server prints");
  await serve(command, cwd, { CHAT_SERVER_PASSWORD: PASSWORD });
}

/** A temp dir for paths the README puts under /etc, removed after `fn`. */
async function withTemp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "chat-readme-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `deno task client` in a project copy against an in-process server, pinned. */
async function clientRun(
  command: string,
  check: (other: TestClient, output: () => string) => Promise<void>,
) {
  await using project = await projectCopy({ certs: false });
  await using srv = await startServer();
  const { client: other } = await TestClient.login(srv.port);
  await using _ = other;
  const { fingerprint } = await testCerts();
  // A process group of its own (setsid): killing it ends `deno task client` under `sh` too.
  const child = new Deno.Command("setsid", {
    args: ["sh", "-c", command],
    cwd: project.dir,
    env: { ...ENV, PORT: String(srv.port), CHAT_SERVER_FINGERPRINT: fingerprint },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const collecting = pipeText([child.stdout, child.stderr], (piece) => output += piece);
  try {
    await check(other, () => output);
    const { code } = await child.status;
    await collecting;
    assert.equal(code, 0, output);
  } finally {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
    await collecting;
  }
}

const RUN_HERE: Record<string, RunHere> = {
  "deno task start": {
    append: PORTS,
    async run(command) {
      await using project = await projectCopy();
      await serve(command, project.dir, { CHAT_SERVER_PASSWORD: PASSWORD });
    },
  },
  "deno task start --help": {
    async run(command) {
      await using project = await projectCopy();
      const { code, stdout } = await sh(command, project.dir);
      assert.equal(code, 0);
      assert.match(stdout, /--web-port/);
    },
  },
  "deno task start --port 4100 --max-per-ip 8": {
    substitute: () => [["--port 4100", "--port 0"]],
    append: "--web-port 0",
    async run(command) {
      await using project = await projectCopy();
      await serve(command, project.dir, { CHAT_SERVER_PASSWORD: PASSWORD });
    },
  },
  "deno task certs": {
    async run(command) {
      await using project = await projectCopy({ certs: false });
      const { code, stdout, stderr } = await sh(command, project.dir);
      assert.equal(code, 0, stderr);
      assert.match(stdout, /SERVER CERTIFICATE FINGERPRINT/);
      assert.ok((await Deno.stat(`${project.dir}/certs/key.pem`)).isFile);
    },
  },
  "deno run --allow-net --allow-read main.ts --password-file /etc/chat/password": {
    substitute: (dir) => [["/etc/chat/password", `${dir}/password`]],
    append: PORTS,
    async run(command) {
      await using project = await projectCopy();
      await serve(command, project.dir);
    },
  },
  "deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net --allow-read=certs,data,web,/etc/chat/password --allow-write=certs,data --allow-run=openssl --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT,REDIS_URL main.ts --password-file /etc/chat/password":
    {
      substitute: (dir) => [["/etc/chat/password", `${dir}/password`]],
      append: PORTS,
      async run(command) {
        await using project = await projectCopy();
        await serveAsPrinted(command, project.dir);
      },
    },
  "deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net --allow-read=certs,data,web,/etc/letsencrypt/live/chat.example.org/fullchain.pem,/etc/letsencrypt/live/chat.example.org/privkey.pem --allow-write=certs,data --allow-run=openssl --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT,REDIS_URL main.ts --cert /etc/letsencrypt/live/chat.example.org/fullchain.pem --key /etc/letsencrypt/live/chat.example.org/privkey.pem --host 0.0.0.0":
    {
      // As certbot lays them out: live/ holds symlinks into archive/.
      substitute: (dir) => [["/etc/letsencrypt", `${dir}/letsencrypt`]],
      append: PORTS,
      async run(command) {
        await using project = await projectCopy({ certs: false });
        await serveAsPrinted(command, project.dir);
      },
    },
  "/usr/bin/deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net --allow-read=certs,data,web,/etc/chat-server --allow-write=data main.ts --host 0.0.0.0 --password-file /etc/chat-server/password":
    {
      substitute: (dir) => [["/usr/bin/deno", "deno"], ["/etc/chat-server", dir]],
      append: PORTS,
      async run(command) {
        await using project = await projectCopy();
        await serve(command, project.dir);
      },
    },
  'echo "deploy finished" | CHAT_SERVER_PASSWORD=... deno task client --name ci --history 0': {
    substitute: () => [["=...", `='${PASSWORD}'`]],
    async run(command) {
      await clientRun(command, async (other) => {
        const frame = await other.recv();
        assert.equal(frame.content, "deploy finished");
        assert.equal(frame.sender, "ci");
      });
    },
  },
  "CHAT_SERVER_PASSWORD=... deno task client --json --linger 60 < /dev/null | jq .content": {
    substitute: () => [["=...", `='${PASSWORD}'`], ["--linger 60", "--linger 2"]],
    async run(command) {
      if (!commandAvailable("jq", ["--version"])) return console.log("no jq: skipped", command);
      await clientRun(command, async (other, output) => {
        assert.ok(await waitFor(() => /Logged in/.test(output()), 20_000), output());
        await other.send({ type: "message", content: "for jq", sender: "bob" });
        assert.ok(await waitFor(() => output().includes('"for jq"'), 5_000), output());
      });
    },
  },
  "deno doc mod.ts": {
    async run(command) {
      const { code, stdout, stderr } = await sh(command, ROOT);
      assert.equal(code, 0, stderr);
      assert.match(stdout, /ChatServer/);
    },
  },
  'sqlite3 data/chat.db ".backup /backups/chat-$(date +%F).db"': {
    substitute: (dir) => [["/backups", `${dir}/backups`]],
    async run(command) {
      if (!commandAvailable("sqlite3", ["--version"])) return console.log("no sqlite3:", command);
      await withTemp(async (dir) => {
        await Deno.mkdir(`${dir}/data`);
        const made = await sh(
          `sqlite3 data/chat.db "create table t(x); insert into t values (7)"`,
          dir,
        );
        assert.equal(made.code, 0, made.stderr);
        const { code, stderr } = await sh(command, dir);
        assert.equal(code, 0, stderr);
        const backups = [...Deno.readDirSync(command.match(/\.backup (\S+)\/chat-/)![1])];
        assert.match(backups[0]?.name ?? "", /^chat-\d{4}-\d\d-\d\d\.db$/);
      });
    },
  },
};

/** The temp files that stand in for the README's example paths under `dir`. */
async function exampleFiles(dir: string): Promise<void> {
  await Deno.writeTextFile(`${dir}/password`, `${PASSWORD}\n`);
  await Deno.mkdir(`${dir}/backups`);
  const { dir: certs } = await testCerts();
  const live = `${dir}/letsencrypt/live/chat.example.org`;
  await Deno.mkdir(`${dir}/letsencrypt/archive/chat.example.org`, { recursive: true });
  await Deno.mkdir(live, { recursive: true });
  for (const [from, to] of [["cert.pem", "fullchain1.pem"], ["key.pem", "privkey1.pem"]]) {
    await Deno.copyFile(`${certs}/${from}`, `${dir}/letsencrypt/archive/chat.example.org/${to}`);
    await Deno.symlink(`../../archive/chat.example.org/${to}`, `${live}/${to.replace("1", "")}`);
  }
}

// --- (b) run by a named test, or by .ci/run ------------------------------------------------------

const RUN_BY: Record<string, { file: string; test?: string; note?: string }> = {
  "deno task test": { file: ".ci/run" },
  "export CHAT_SERVER_FINGERPRINT=256c4284...3514": {
    file: "tests/client_test.ts",
    test:
      "client with the right pin chats through the server (env, --fingerprint, --fingerprint-file)",
    note: "the value is a placeholder for the banner's; pinning by the variable is tested",
  },
  "deno task client --name alice": {
    file: "tests/tty_test.ts",
    test: "tty: Ctrl-C clears a typed line, then leaves; /me; addresses only when names clash",
    note: "the client with the task's permissions, interactive, in a tmux pane",
  },
  "deno task bench": {
    file: "tests/bench_smoke_test.ts",
    test: "bench --quick measures our server (and the reference, if present) in every scenario",
    note: "with --quick: the full run takes minutes",
  },
  "deno task soak": {
    file: "tests/soak_test.ts",
    test: "ChatServer loses no honest message while every kind of abuse runs at once",
    note: "the same soak for a few seconds: the full run takes 120 s",
  },
  "UPDATE_SCREENSHOT=1 deno task test tests/web_browser_test.ts": {
    file: "tests/web_browser_test.ts",
    test: "web client in Chromium: chat, history, presence, HTML as text, restart, wrong password",
    note: "the same test without UPDATE_SCREENSHOT, which leaves docs/web-client.png as it is",
  },
  "apt-get install chromium": {
    file: ".ci/run",
    test: "apt-get install -y -qq chromium",
    note: ".ci/run installs Debian's chromium when /usr/bin/chromium is missing",
  },
  "apt-get install redis-server": {
    file: ".ci/run",
    test: "apt-get install -y -qq redis-server",
    note: ".ci/run installs Debian's redis-server when it is missing (for the cluster tests)",
  },
  "deno task compile": {
    file: "tests/cli_test.ts",
    test: "deno task compile builds an executable that runs (where Deno can download denort)",
  },
};

// --- (c) not runnable here -----------------------------------------------------------------------

const NOT_RUNNABLE: Record<string, string> = {
  "npm install -g deno@2.9.6": "installs Deno globally (.ci/run does it where deno is missing)",
  "npx -y deno@2.9.6 task start":
    "downloads Deno from npm; it is `deno task start`, which runs here",
  "npx -y deno@2.9.6 task test": "downloads Deno from npm; it is `deno task test`, run by .ci/run",
  "deno task ok": "runs `deno task test`, which runs this file: a test cannot run it",
  'certutil -d sql:$HOME/.pki/nssdb -A -t "P,," -n chat-server -i certs/cert.pem':
    "changes the user's browser trust store (Chrome/Chromium on Linux); not for a test to do",
  "sudo security add-trusted-cert -d -r trustAsRoot -p ssl -k /Library/Keychains/System.keychain certs/cert.pem":
    "macOS only, needs root",
  "certutil -addstore -user Root certs\\cert.pem": "Windows only",
  "sudo -u chat deno task certs --host 0.0.0.0":
    "needs root and a `chat` user; `deno task certs` runs here",
};

Deno.test("every README command is run here, run by a named test or .ci/run, or says why not", async () => {
  const commands = readmeCommands(README);
  const lists = [Object.keys(RUN_HERE), Object.keys(RUN_BY), Object.keys(NOT_RUNNABLE)];
  const unlisted = commands.filter((command) => !lists.some((list) => list.includes(command)));
  assert.deepEqual(unlisted, [], "README commands in none of the lists");
  const gone = lists.flat().filter((command) => !commands.includes(command));
  assert.deepEqual(gone, [], "listed commands the README no longer has");
  for (const [command, { file, test }] of Object.entries(RUN_BY)) {
    const text = await Deno.readTextFile(`${ROOT}${file}`);
    const names = test === undefined ? command : file.endsWith(".ts") ? JSON.stringify(test) : test;
    assert.ok(text.includes(names), `${file} has no ${test ?? command} (for ${command})`);
  }
});

Deno.test("the extractor finds blocks, continuations, comments, inline spans and unit files", () => {
  const markdown = [
    "Run `deno task start --port 1` or `--help`; see `main.ts`, `deno run` and `openssl`.",
    "```sh",
    "deno run a \\",
    "  b   # two lines",
    "# only a comment",
    "X=1 deno task client # with env",
    "```",
    "```",
    "==== banner ====",
    "export A=b",
    "```",
    "```ini",
    "# made once with: sudo deno task certs",
    "ExecStart=/usr/bin/deno run \\",
    "  main.ts",
    "```",
    "```ts",
    "deno.exit();",
    "```",
  ].join("\n");
  assert.deepEqual(readmeCommands(markdown), [
    "deno run a b",
    "X=1 deno task client",
    "export A=b",
    "sudo deno task certs",
    "/usr/bin/deno run main.ts",
    "deno task start --port 1",
  ]);
});

Deno.test("README commands run as written (with the listed substitutions)", async () => {
  await withTemp(async (dir) => {
    await exampleFiles(dir);
    const results = await Promise.allSettled(
      Object.entries(RUN_HERE).map(async ([readme, entry]) => {
        let command = readme;
        for (const [from, to] of entry.substitute?.(dir) ?? []) {
          assert.ok(command.includes(from), `${from} is not in ${readme}`);
          command = command.replaceAll(from, to);
        }
        if (entry.append) command += ` ${entry.append}`;
        await entry.run(command);
      }),
    );
    const failures = results.flatMap((result, i) =>
      result.status === "rejected"
        ? [`${Object.keys(RUN_HERE)[i]}\n  ${String(result.reason?.stack ?? result.reason)}`]
        : []
    );
    assert.deepEqual(failures, []);
  });
});

Deno.test("clientRun leaves nothing running when its check fails", async () => {
  const pidFile = await Deno.makeTempFile({ prefix: "readme-pid-" });
  const pid = () => Number(Deno.readTextFileSync(pidFile).trim());
  const alive = () => {
    try {
      return !/^State:\s+Z/m.test(Deno.readTextFileSync(`/proc/${pid()}/status`));
    } catch {
      return false;
    }
  };
  // As `deno task client` under `sh`: a child of the shell that outlives a kill of the shell.
  const run = clientRun(`sleep 300 & echo $! > '${pidFile}'; wait`, async () => {
    assert.ok(await waitFor(() => pid() > 0, 5000));
    throw new Error("the check failed");
  });
  // Left running, the child would hold clientRun's pipes open: it would not return.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error("clientRun did not return: a child is left")),
      10_000,
    );
  });
  try {
    await assert.rejects(Promise.race([run, late]), /the check failed/);
    assert.ok(await waitFor(() => !alive(), 2000), `process ${pid()} is still running`);
  } finally {
    clearTimeout(timer);
    if (pid() > 0 && alive()) Deno.kill(pid(), "SIGKILL");
    await run.catch(() => {});
    await Deno.remove(pidFile);
  }
});
