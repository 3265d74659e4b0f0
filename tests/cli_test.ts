import assert from "node:assert/strict";
import { fingerprintBanner } from "../src/server/certs.ts";
import {
  commandAvailable,
  PASSWORD,
  pipeText,
  projectCopy,
  spawnServer,
  testCerts,
  TestClient,
  waitFor,
  withDataDir,
  withWebPort,
} from "./_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Runs main.ts to completion (for the cases that exit by themselves). */
async function runMain(
  args: string[],
  options: { env?: Record<string, string>; permissions?: string[] } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...(options.permissions ?? ["-A"]),
      MAIN,
      ...withDataDir(withWebPort(args)),
    ],
    env: options.env,
    stdin: "null",
  }).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

/** A cert dir with a pair copied from the shared test pair (so tests do not run openssl). */
async function certDirCopy(): Promise<string> {
  const { dir } = await testCerts();
  const copy = await Deno.makeTempDir({ prefix: "chat-cli-" });
  await Deno.copyFile(`${dir}/cert.pem`, `${copy}/cert.pem`);
  await Deno.copyFile(`${dir}/key.pem`, `${copy}/key.pem`);
  return copy;
}

Deno.test("main.ts prints the banner, the password line and the started line with the real port", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-cli-" });
  try {
    await using server = await spawnServer(["--port", "0", "--cert-dir", dir], {
      env: { CHAT_SERVER_PASSWORD: PASSWORD },
    });
    assert.ok(server.port > 0);
    const output = server.output();
    const fingerprint = (await Deno.readTextFile(`${dir}/server_fingerprint.txt`))
      .split("\n")[4];
    assert.match(fingerprint, /^[0-9a-f]{64}$/);
    assert.ok(output.includes(fingerprintBanner(fingerprint)), "banner missing or altered");
    assert.ok(output.includes("Server password set successfully..."));
    assert.match(
      output,
      new RegExp(`server started on port -> ${server.port} and ip -> 127.0.0.1`),
    );
    assert.ok(!output.includes(PASSWORD), "the password was printed");
    assert.equal((await Deno.stat(`${dir}/key.pem`)).mode! & 0o777, 0o600);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts exits 1 with a message when there is no password and no terminal", async () => {
  const dir = await certDirCopy();
  try {
    const { code, stderr } = await runMain(["--port", "0", "--cert-dir", dir], { env: {} });
    assert.equal(code, 1);
    assert.match(stderr, /No password: set CHAT_SERVER_PASSWORD, pass --password-file FILE/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts refuses an empty password", async () => {
  const dir = await certDirCopy();
  try {
    await Deno.writeTextFile(`${dir}/password`, "\n");
    const fromFile = await runMain(["--cert-dir", dir, "--password-file", `${dir}/password`]);
    assert.equal(fromFile.code, 1);
    assert.match(fromFile.stderr, /empty password/);
    // An empty variable counts as unset (src/common/env.ts): no terminal here, so no password.
    const fromEnv = await runMain(["--cert-dir", dir], { env: { CHAT_SERVER_PASSWORD: "" } });
    assert.equal(fromEnv.code, 1);
    assert.match(fromEnv.stderr, /No password/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts rejects bad flags with exit 1 and prints help with exit 0", async () => {
  const bad = await runMain(["--max-frame", "lots"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /Invalid --max-frame "lots"/);
  const unknown = await runMain(["--frobnicate"]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /--help/);
  const help = await runMain(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--max-send-queue/);
});

Deno.test("main.ts stops on SIGTERM with exit 0 after telling clients shutting_down", async () => {
  const dir = await certDirCopy();
  try {
    const server = await spawnServer(["--port", "0", "--cert-dir", dir], {
      env: { CHAT_SERVER_PASSWORD: PASSWORD },
    });
    await using _ = server;
    const { client, reply } = await TestClient.login(server.port);
    await using __ = client;
    assert.equal(reply.success, true);
    server.child.kill("SIGTERM");
    const notice = await client.recv();
    assert.equal(notice.type, "error");
    assert.equal(notice.code, "shutting_down");
    assert.ok(await client.waitClosed());
    const { code } = await server.exited();
    assert.equal(code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task start: SIGINT or SIGTERM to its whole process group stops gracefully, 10 of 10", async () => {
  // `deno task` forwards a signal to the server, which also gets the group's own copy: the two
  // are one request to stop, not "a second signal: force exit". Ten at once, as a terminal's
  // Ctrl-C, `timeout` and systemd deliver them.
  await using project = await projectCopy();
  const runs = Array.from({ length: 10 }, async (_, i) => {
    const signal: Deno.Signal = i % 2 === 0 ? "SIGINT" : "SIGTERM";
    // setsid makes the task the leader of a new process group, as a shell job is.
    const child = new Deno.Command("setsid", {
      args: [
        Deno.execPath(),
        "task",
        "start",
        "--port",
        "0",
        "--web-port",
        "0",
        "--data-dir",
        `data/${i}`,
      ],
      cwd: project.dir,
      env: { CHAT_SERVER_PASSWORD: PASSWORD, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let output = "";
    const collecting = pipeText([child.stdout, child.stderr], (piece) => output += piece);
    try {
      const started = /server started on port -> (\d+)/;
      assert.ok(await waitFor(() => started.test(output), 30_000), output);
      const { client, reply } = await TestClient.login(Number(started.exec(output)![1]));
      await using _ = client;
      assert.equal(reply.success, true);
      Deno.kill(-child.pid, signal);
      const notice = await client.recv();
      assert.equal(notice.code, "shutting_down", `${signal} #${i}: ${JSON.stringify(notice)}`);
      const { code } = await child.status;
      await collecting;
      assert.equal(code, 0, `${signal} #${i}: exit ${code}\n${output}`);
      assert.ok(!output.includes("Second signal"), output);
    } finally {
      try {
        Deno.kill(-child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
      await child.status;
      await collecting;
    }
  });
  await Promise.all(runs);
});

Deno.test("main.ts exits 0 within 3 s of SIGTERM while refused connections stay silent", async () => {
  const dir = await certDirCopy();
  try {
    const server = await spawnServer(["--port", "0", "--cert-dir", dir, "--max-per-ip", "1"], {
      env: { CHAT_SERVER_PASSWORD: PASSWORD },
    });
    await using _ = server;
    // One silent connection takes the address's only slot; the next ones are refused and stay
    // silent too, so their refusal never completes on its own.
    const silent = await Promise.all(
      Array.from({ length: 3 }, () => Deno.connect({ hostname: "127.0.0.1", port: server.port })),
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const started = performance.now();
      server.child.kill("SIGTERM");
      const { code, output } = await server.exited();
      const elapsed = performance.now() - started;
      assert.equal(code, 0, output);
      assert.ok(elapsed < 3000, `exited ${Math.round(elapsed)} ms after SIGTERM`);
    } finally {
      for (const conn of silent) conn.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts exits 1 with a clear message when it cannot listen", async (t) => {
  const dir = await certDirCopy();
  const env = { CHAT_SERVER_PASSWORD: PASSWORD };
  try {
    await t.step("a host name that does not resolve", async () => {
      const { code, stderr } = await runMain(
        ["--cert-dir", dir, "--host", "no-such-host.invalid", "--port", "0"],
        { env },
      );
      assert.equal(code, 1, stderr);
      assert.match(
        stderr,
        /Cannot listen on no-such-host\.invalid:0: cannot resolve the host name/,
      );
    });
    await t.step("a port already in use", async () => {
      using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (taken.addr as Deno.NetAddr).port;
      const { code, stdout, stderr } = await runMain(
        ["--cert-dir", dir, "--port", String(port)],
        { env },
      );
      assert.equal(code, 1, stderr);
      assert.match(
        stderr,
        new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${port}: the port is already in use`),
      );
      // Checked first: no banner and no "password set" before the error.
      assert.equal(stdout, "", "printed before the port was checked");
      assert.ok(!stderr.includes("Server password"), stderr);
    });
    await t.step("an address this machine does not have", async () => {
      const { code, stderr } = await runMain(
        ["--cert-dir", dir, "--host", "192.0.2.1", "--port", "0"],
        { env },
      );
      assert.equal(code, 1, stderr);
      assert.match(stderr, /Cannot listen on 192\.0\.2\.1:0: this machine has no such address/);
    });
    // Root may bind port 80 unless it lacks CAP_NET_BIND_SERVICE: setpriv drops that capability.
    // Deno.uid() would need --allow-sys, which `deno task test` does not grant.
    const uid = new Deno.Command("id", { args: ["-u"], stdout: "piped" }).outputSync();
    const asRoot = new TextDecoder().decode(uid.stdout).trim() === "0";
    const setpriv = asRoot && commandAvailable("setpriv", ["--version"]);
    await t.step({
      name: "a privileged port without the right to bind it",
      ignore: asRoot && !setpriv,
      fn: async () => {
        const command = [Deno.execPath(), "run", "--no-prompt", "-A", MAIN, "--cert-dir", dir]
          .concat("--data-dir", `${dir}/data`, "--web-port", "off");
        const argv = asRoot
          ? ["setpriv", "--bounding-set=-net_bind_service", ...command, "--port", "80"]
          : [...command, "--port", "80"];
        const out = await new Deno.Command(argv[0], { args: argv.slice(1), env, stdin: "null" })
          .output();
        const stderr = new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 1, stderr);
        assert.match(stderr, /Cannot listen on 127\.0\.0\.1:80: not allowed/);
      },
    });
    if (asRoot && !setpriv) console.log("Skipping the port 80 case: root without setpriv");
    await t.step("no permission for the address", async () => {
      const { code, stderr } = await runMain(
        ["--cert-dir", dir, "--host", "::1", "--port", "4100"],
        {
          env,
          permissions: ["--allow-read", "--allow-env", "--allow-net=127.0.0.1:4100"],
        },
      );
      assert.equal(code, 1, stderr);
      assert.match(stderr, /Cannot listen on \[::1\]:4100: run with --allow-net=\[::1\]:4100/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const HAS_IPV6 = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();
if (!HAS_IPV6) console.log("Skipping the IPv6 listen test: this machine has no ::1");

Deno.test({
  name: "main.ts listens on ::1 with exactly --allow-net=[::1]:PORT",
  ignore: !HAS_IPV6,
  async fn() {
    const dir = await certDirCopy();
    try {
      await Deno.writeTextFile(`${dir}/password`, `${PASSWORD}\n`);
      const probe = Deno.listen({ hostname: "::1", port: 0 });
      const port = (probe.addr as Deno.NetAddr).port;
      probe.close();
      await using server = await spawnServer(
        [
          "--host",
          "::1",
          "--port",
          String(port),
          "--cert-dir",
          dir,
          "--password-file",
          `${dir}/password`,
        ],
        { permissions: [`--allow-net=[::1]:${port}`, "--allow-read"] },
      );
      assert.equal(server.port, port);
      const { client, reply } = await TestClient.login(port, PASSWORD, { hostname: "::1" });
      await client.close();
      assert.equal(reply.success, true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("main.ts runs with only --allow-net --allow-read once certificates exist", async () => {
  const dir = await certDirCopy();
  try {
    await Deno.writeTextFile(`${dir}/password`, `${PASSWORD}\n`);
    await using server = await spawnServer(
      ["--port", "0", "--cert-dir", dir, "--password-file", `${dir}/password`],
      { permissions: ["--allow-net", "--allow-read"] },
    );
    const { client, reply } = await TestClient.login(server.port);
    await client.close();
    assert.equal(reply.success, true, "the password file (with its newline) was not used");
    assert.match(server.output(), /--allow-write=/, "no hint that the fingerprint file is stale");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts names the missing permission instead of prompting", async (t) => {
  const dir = await certDirCopy();
  try {
    await t.step("no --allow-net", async () => {
      const { code, stderr } = await runMain(["--port", "0", "--cert-dir", dir], {
        permissions: ["--allow-read", "--allow-env"],
        env: { CHAT_SERVER_PASSWORD: PASSWORD },
      });
      assert.equal(code, 1);
      assert.match(stderr, /--allow-net/);
    });
    await t.step("no --allow-run to generate certificates", async () => {
      const empty = `${dir}/empty`;
      const { code, stderr } = await runMain(["--port", "0", "--cert-dir", empty], {
        permissions: ["--allow-read", "--allow-write", "--allow-env", "--allow-net"],
        env: { CHAT_SERVER_PASSWORD: PASSWORD },
      });
      assert.equal(code, 1);
      assert.match(stderr, /--allow-run=openssl/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task start without openssl says to install it, not to grant --allow-run", async () => {
  // Deno drops --allow-run=openssl when there is no openssl to run; the error must not ask for it.
  await using project = await projectCopy({ certs: false });
  const bin = `${project.dir}/bin`;
  await Deno.mkdir(bin);
  await Deno.symlink(Deno.execPath(), `${bin}/deno`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "start", "--port", "0", "--web-port", "off"],
    cwd: project.dir,
    env: { PATH: bin, CHAT_SERVER_PASSWORD: PASSWORD, NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, stderr);
  assert.match(stderr, /error: Cannot generate certificates: openssl is not installed; install it/);
  assert.ok(!/run with --allow-run/.test(stderr), stderr);
});

Deno.test("deno task start with a file outside certs/ prints a command line that works", async () => {
  await using project = await projectCopy();
  const outside = await Deno.makeTempDir({ prefix: "chat-outside-" });
  try {
    await Deno.writeTextFile(`${outside}/password`, `${PASSWORD}\n`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "task",
        "start",
        "--port",
        "0",
        "--web-port",
        "0",
        "--password-file",
        `${outside}/password`,
      ],
      cwd: project.dir,
      env: { NO_COLOR: "1" },
      stdin: "null",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    const command = stderr.split("\n").find((line) => line.startsWith("  deno run "));
    assert.ok(command, stderr);
    assert.ok(command.includes(`--allow-read=certs,data,web,${outside}/password`), command);
    // Run it as printed, from the project dir, as a shell would.
    const child = new Deno.Command("sh", {
      args: ["-c", `exec ${command.trim().replace(/^deno /, `'${Deno.execPath()}' `)}`],
      cwd: project.dir,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let output = "";
    const collecting = pipeText([child.stdout, child.stderr], (piece) => output += piece);
    const started = await waitFor(() => /server started on port/.test(output), 20_000);
    child.kill("SIGTERM");
    const { code } = await child.status;
    await collecting;
    assert.ok(started, output);
    assert.equal(code, 0, output);
  } finally {
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("main.ts --certs-only generates the pair, prints the fingerprint and exits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-cli-" });
  try {
    const { code, stdout } = await runMain(["--certs-only", "--cert-dir", dir]);
    assert.equal(code, 0);
    assert.match(stdout, /SERVER CERTIFICATE FINGERPRINT:/);
    const names = [...Deno.readDirSync(dir)].map((entry) => entry.name).sort();
    assert.deepEqual(names, ["cert.pem", "key.pem", "server_fingerprint.txt"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts writes JSON log lines with --log-format json", async () => {
  const dir = await certDirCopy();
  try {
    await using server = await spawnServer(
      ["--port", "0", "--cert-dir", dir, "--log-format", "json", "--log-level", "debug"],
      { env: { CHAT_SERVER_PASSWORD: PASSWORD } },
    );
    const started = server.output().split("\n").find((line) => line.includes("server started"));
    const record = JSON.parse(started!);
    assert.equal(record.level, "INFO");
    assert.equal(
      record.message,
      "server started on port -> " + server.port + ' and ip -> "127.0.0.1"'.replaceAll('"', ""),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const HAS_SCRIPT = commandAvailable("script", ["--version"]);
if (!HAS_SCRIPT) console.log("Skipping the terminal prompt test: util-linux `script` not found");

Deno.test({
  name: "main.ts prompts for the password on a terminal without echoing it",
  ignore: !HAS_SCRIPT,
  async fn() {
    const dir = await certDirCopy();
    try {
      const command = [Deno.execPath(), "run", "-A", MAIN, "--port", "0", "--cert-dir", dir]
        .concat("--data-dir", `${dir}/data`, "--web-port", "off")
        .map((arg) => `'${arg}'`).join(" ");
      const child = new Deno.Command("script", {
        args: ["-qefc", command, "/dev/null"],
        clearEnv: true, // no CHAT_SERVER_PASSWORD, so the prompt is used
        env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", TERM: "dumb" },
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      let output = "";
      const reading = pipeText([child.stdout], (piece) => output += piece);
      const until = async (pattern: RegExp) => {
        for (let i = 0; i < 500 && !pattern.test(output); i++) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        assert.match(output, pattern);
      };
      await until(/Enter server password: /);
      const banner = output.indexOf("SERVER CERTIFICATE FINGERPRINT");
      assert.ok(banner >= 0 && banner < output.indexOf("Enter server password"), output);
      await writer.write(new TextEncoder().encode(`${PASSWORD}\r`));
      const started = /server started on port -> (\d+)/;
      await until(started);
      const port = Number(started.exec(output)![1]);
      const { client, reply } = await TestClient.login(port);
      await client.close();
      assert.equal(reply.success, true, "the typed password was not the one set");
      assert.ok(!output.includes(PASSWORD), "the password was echoed");
      // Ctrl-C on the terminal stops the server (SIGINT to the terminal's foreground job); a
      // SIGTERM to `script` would leave it running (the SIGHUP it then gets means "reload").
      await writer.write(new TextEncoder().encode("\x03"));
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await child.status.finally(() => clearTimeout(timer));
      await writer.close().catch(() => {});
      await child.stderr.cancel();
      await reading;
      await child.status;
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deno task compile builds an executable that runs (where Deno can download denort)", async () => {
  // Run the task's own command line, with the output redirected to a temp dir.
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const words = (config.tasks.compile as string).split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "compile"]);
  const dir = await Deno.makeTempDir({ prefix: "chat-compile-" });
  try {
    const output = `${dir}/chat-server`;
    const args = words.slice(1).map((word, i, all) => all[i - 1] === "--output" ? output : word)
      .map((word) => word === "main.ts" ? MAIN : word);
    const built = await new Deno.Command(Deno.execPath(), {
      args,
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const stderr = new TextDecoder().decode(built.stderr);
    if (!built.success && /dns error|lookup address|error sending request|network/i.test(stderr)) {
      console.log("Skipping: deno compile cannot download its runtime (denort) here: no network");
      return;
    }
    assert.ok(built.success, stderr);
    const help = await new Deno.Command(output, { args: ["--help"], stdout: "piped" }).output();
    assert.equal(help.code, 0);
    assert.match(new TextDecoder().decode(help.stdout), /--max-send-queue/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
