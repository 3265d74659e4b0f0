import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { join } from "node:path";
import {
  CertError,
  ensureCertificates,
  fingerprintBanner,
  fingerprintFileText,
  fingerprintOf,
  LOCK_FILE,
  writeFingerprintFile,
} from "../src/server/certs.ts";
import { formatFingerprint } from "../src/common/fingerprint.ts";

const HEX = "a1b2c3d4e5f67890abcdef1234567890abcdef1234567890abcdef1234567890";
const CERTS_MODULE = new URL("../src/server/certs.ts", import.meta.url).href;
const PERMISSIONS_MODULE = new URL("../src/common/permissions.ts", import.meta.url).href;
const MAIN = new URL("../main.ts", import.meta.url).pathname;
const REPO_ROOT = new URL("..", import.meta.url).pathname;
/** Variables a shell sets by itself, so a dump of an empty environment may still show them. */
const SHELL_OWN_VARIABLES = new Set(["PWD", "OLDPWD", "SHLVL", "_"]);
const decoder = new TextDecoder();

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "certs_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function openssl(...args: string[]): Promise<string> {
  const out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" })
    .output();
  assert.ok(out.success, decoder.decode(out.stderr));
  return decoder.decode(out.stdout);
}

/** Runs `code` as a module in a fresh Deno process and returns its trimmed stdout. */
async function runScript(
  dir: string,
  code: string,
  flags: string[],
  env?: Record<string, string>,
): Promise<string> {
  const script = join(dir, `script_${crypto.randomUUID()}.ts`);
  await Deno.writeTextFile(script, code);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--no-config", "--quiet", ...flags, script],
    cwd: dir,
    env,
    clearEnv: env !== undefined,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, decoder.decode(out.stderr));
  return decoder.decode(out.stdout).trim();
}

/** A script that calls ensureCertificates and prints the error's name and message. */
function ensureScript(options: Record<string, string>): string {
  return `import { ensureCertificates } from ${JSON.stringify(CERTS_MODULE)};
try {
  await ensureCertificates(${JSON.stringify(options)});
  console.log("ok");
} catch (err) {
  console.log(err.name + ": " + err.message);
}
`;
}

async function listDir(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((entry) => entry.name).sort();
}

Deno.test("ensureCertificates generates a pair once and reuses it", async (t) => {
  await withTempDir(async (dir) => {
    const certDir = join(dir, "nested", "certs");
    const first = await ensureCertificates({ certDir, host: "127.0.0.1" });

    await t.step("first call generates cert.pem and key.pem in a new dir", async () => {
      assert.equal(first.generated, true);
      assert.equal(first.certPath, join(certDir, "cert.pem"));
      assert.equal(first.keyPath, join(certDir, "key.pem"));
      assert.match(first.fingerprint, /^[0-9a-f]{64}$/);
      assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem"]);
      assert.equal(await Deno.readTextFile(first.certPath), first.certPem);
      assert.equal(await Deno.readTextFile(first.keyPath), first.keyPem);
    });

    await t.step("second call reuses the files unchanged", async () => {
      const second = await ensureCertificates({ certDir, host: "127.0.0.1" });
      assert.equal(second.generated, false);
      assert.equal(second.fingerprint, first.fingerprint);
      assert.equal(second.certPem, first.certPem);
      assert.equal(second.keyPem, first.keyPem);
      assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem"]);
    });

    await t.step("fingerprint equals openssl's SHA-256 fingerprint", async () => {
      const out = await openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", first.certPath);
      const expected = out.trim().split("=")[1].replaceAll(":", "").toLowerCase();
      assert.equal(first.fingerprint, expected);
    });

    await t.step("key.pem is mode 0600 and cert.pem is mode 0644", async () => {
      assert.equal((await Deno.stat(first.keyPath)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(first.certPath)).mode! & 0o777, 0o644);
    });
  });
});

Deno.test("ensureCertificates generates a non-CA server certificate for the host", async (t) => {
  async function certText(host: string): Promise<string> {
    let text = "";
    await withTempDir(async (dir) => {
      const pair = await ensureCertificates({ certDir: dir, host });
      text = await openssl("x509", "-noout", "-text", "-in", pair.certPath);
    });
    return text;
  }

  await t.step("DNS host", async () => {
    const text = await certText("chat.example.test");
    assert.match(text, /Public Key Algorithm: id-ecPublicKey/);
    assert.match(text, /NIST CURVE: P-256/);
    assert.match(text, /Subject: CN = chat\.example\.test/);
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
    assert.match(text, /X509v3 Extended Key Usage:\s+TLS Web Server Authentication\n/);
    assert.match(text, /X509v3 Key Usage: critical\s+Digital Signature\n/);
    const san = /X509v3 Subject Alternative Name:\s+(.*)\n/.exec(text)?.[1];
    assert.equal(
      san,
      "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:chat.example.test",
    );
  });

  await t.step("IPv4 host becomes an IP entry", async () => {
    assert.match(
      await certText("10.1.2.3"),
      /IP Address:0:0:0:0:0:0:0:1, IP Address:10\.1\.2\.3\n/,
    );
  });

  await t.step("IPv6 host becomes an IP entry", async () => {
    assert.match(await certText("fd00::7"), /IP Address:FD00:0:0:0:0:0:0:7\n/);
  });

  await t.step("duplicates and wildcard binds add no entry", async () => {
    const defaults = "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1\n";
    for (const host of ["127.0.0.1", "localhost", "::1", "0.0.0.0", "::"]) {
      const text = await certText(host);
      assert.ok(text.includes(`Alternative Name: \n                ${defaults}`), host);
      assert.match(text, /Subject: CN = (localhost|127\.0\.0\.1|::1)\n/, host);
    }
  });
});

Deno.test("Deno's TLS client accepts a generated certificate", async () => {
  await withTempDir(async (dir) => {
    const pair = await ensureCertificates({ certDir: dir, host: "127.0.0.1" });
    using listener = Deno.listenTls({
      port: 0,
      hostname: "127.0.0.1",
      cert: pair.certPem,
      key: pair.keyPem,
    });
    const accepted = listener.accept();
    using client = await Deno.connectTls({
      port: listener.addr.port,
      hostname: "127.0.0.1",
      caCerts: [pair.certPem],
    });
    using server = await accepted;
    const [info] = await Promise.all([client.handshake(), server.handshake()]);
    assert.ok(info.alpnProtocol === null);
  });
});

Deno.test("fingerprintOf hashes the first certificate of a chain", async () => {
  await withTempDir(async (dir) => {
    const a = await ensureCertificates({ certDir: join(dir, "a"), host: "localhost" });
    const b = await ensureCertificates({ certDir: join(dir, "b"), host: "localhost" });
    assert.equal(await fingerprintOf(a.certPem + b.certPem), a.fingerprint);
    assert.equal(await fingerprintOf(b.certPem + a.certPem), b.fingerprint);
    await assert.rejects(fingerprintOf("not a certificate"), CertError);
  });
});

Deno.test("fingerprint banner and file match the seed's formats byte for byte", async (t) => {
  const formatted = "a1:b2:c3:d4:e5:f6:78:90:ab:cd:ef:12:34:56:78:90:" +
    "ab:cd:ef:12:34:56:78:90:ab:cd:ef:12:34:56:78:90";
  const expectedFile = "# Server Certificate Information\n" +
    "# Generated: 2026-11-25T12:00:00.000Z\n" +
    "\n" +
    "# Fingerprint (for client verification):\n" +
    "a1b2c3d4e5f67890abcdef1234567890abcdef1234567890abcdef1234567890\n" +
    "\n" +
    "# Formatted:\n" +
    `${formatted}\n` +
    "\n" +
    "# Usage:\n" +
    "export CHAT_SERVER_FINGERPRINT=a1b2c3d4e5f67890abcdef1234567890abcdef1234567890abcdef1234567890\n";
  const generated = new Date("2026-11-25T12:00:00.000Z");

  await t.step("formatFingerprint inserts colons", () => {
    assert.equal(formatFingerprint(HEX), formatted);
    assert.throws(() => formatFingerprint("A1B2"), TypeError);
  });

  await t.step("banner", () => {
    assert.equal(
      fingerprintBanner(HEX),
      "======================================================================\n" +
        "SERVER CERTIFICATE FINGERPRINT:\n" +
        `${formatted}\n` +
        "\n" +
        "For secure client connections:\n" +
        "export CHAT_SERVER_FINGERPRINT=a1b2c3d4e5f67890abcdef1234567890abcdef1234567890abcdef1234567890\n" +
        "\n" +
        "Clients without fingerprint will show security warning\n" +
        "======================================================================\n",
    );
  });

  await t.step("server_fingerprint.txt text", () => {
    assert.equal(fingerprintFileText(HEX, generated), expectedFile);
  });

  await t.step("writeFingerprintFile replaces the file and leaves no temp file", async () => {
    await withTempDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "server_fingerprint.txt"), "old contents");
      const path = await writeFingerprintFile(dir, HEX, generated);
      assert.equal(path, join(dir, "server_fingerprint.txt"));
      assert.equal(await Deno.readTextFile(path), expectedFile);
      assert.deepEqual(await listDir(dir), ["server_fingerprint.txt"]);
    });
  });
});

Deno.test("ensureCertificates uses a pair given by --cert and --key", async (t) => {
  await withTempDir(async (dir) => {
    const a = await ensureCertificates({ certDir: join(dir, "a"), host: "localhost" });
    const b = await ensureCertificates({ certDir: join(dir, "b"), host: "localhost" });
    const certDir = join(dir, "unused");

    await t.step("a matching pair is used as is", async () => {
      const pair = await ensureCertificates({
        certDir,
        certFile: a.certPath,
        keyFile: a.keyPath,
        host: "localhost",
      });
      assert.equal(pair.generated, false);
      assert.equal(pair.fingerprint, a.fingerprint);
      assert.equal(pair.certPath, a.certPath);
      assert.equal(pair.keyPath, a.keyPath);
      assert.equal(pair.keyPem, a.keyPem);
      await assert.rejects(Deno.stat(certDir), Deno.errors.NotFound);
    });

    await t.step("a key that does not match the certificate is refused", async () => {
      await assert.rejects(
        ensureCertificates({
          certDir,
          certFile: a.certPath,
          keyFile: b.keyPath,
          host: "localhost",
        }),
        (err) =>
          err instanceof CertError && err.message.includes(b.keyPath) &&
          err.message.includes("does not match"),
      );
    });

    await t.step("a certificate file given as the key is refused", async () => {
      await assert.rejects(
        ensureCertificates({ certDir, certFile: a.certPath, keyFile: a.certPath, host: "x" }),
        CertError,
      );
    });

    await t.step("only one of --cert and --key is refused", async () => {
      await assert.rejects(
        ensureCertificates({ certDir, certFile: a.certPath, host: "localhost" }),
        { name: "CertError", message: /--cert without --key/ },
      );
      await assert.rejects(
        ensureCertificates({ certDir, keyFile: a.keyPath, host: "localhost" }),
        { name: "CertError", message: /--key without --cert/ },
      );
    });

    await t.step("a missing file is refused by name", async () => {
      const missing = join(dir, "nope.pem");
      await assert.rejects(
        ensureCertificates({ certDir, certFile: missing, keyFile: a.keyPath, host: "localhost" }),
        (err) => err instanceof CertError && err.message.includes(`${missing}: file not found`),
      );
      await assert.rejects(
        ensureCertificates({ certDir, certFile: a.certPath, keyFile: missing, host: "localhost" }),
        (err) => err instanceof CertError && err.message.includes(`${missing}: file not found`),
      );
    });
  });
});

Deno.test("ensureCertificates refuses half a pair and overwrites nothing", async (t) => {
  for (const [present, missing] of [["key.pem", "cert.pem"], ["cert.pem", "key.pem"]]) {
    await t.step(`only ${present} present`, async () => {
      await withTempDir(async (dir) => {
        await Deno.writeTextFile(join(dir, present), "precious");
        await assert.rejects(
          ensureCertificates({ certDir: dir, host: "localhost" }),
          (err) =>
            err instanceof CertError &&
            err.message.includes(`${join(dir, missing)} is missing`) &&
            err.message.includes(`delete ${join(dir, present)}`),
        );
        assert.equal(await Deno.readTextFile(join(dir, present)), "precious");
        assert.deepEqual(await listDir(dir), [present]);
      });
    });
  }
});

Deno.test("ensureCertificates rejects a host that is not a hostname or IP literal", async () => {
  await withTempDir(async (dir) => {
    const bad = ["a,IP:1.2.3.4", "x/y", "a b", "-lead", "host/CN=evil", "a..b", "fe80::1%eth0"];
    for (const host of bad) {
      await assert.rejects(
        ensureCertificates({ certDir: dir, host }),
        { name: "CertError", message: /plain hostname or IP address/ },
        host,
      );
    }
    assert.deepEqual(await listDir(dir), []);
  });
});

Deno.test("ensureCertificates says how to install openssl when it is missing", async () => {
  await withTempDir(async (dir) => {
    const certDir = join(dir, "certs");
    const out = await runScript(
      dir,
      ensureScript({ certDir, host: "localhost" }),
      ["--allow-all"],
      {
        PATH: "/nonexistent",
        HOME: Deno.env.get("HOME") ?? dir,
      },
    );
    assert.equal(
      out,
      "CertError: Cannot generate certificates: openssl is not installed; install it " +
        "(e.g. apt-get install openssl) or pass --cert and --key",
    );
    await assert.rejects(Deno.stat(certDir), Deno.errors.NotFound);
  });
});

/**
 * Runs `code` as {@link runScript} does, but with stdin on a pseudo-terminal (util-linux
 * `script`), where ensureCertificates must not spawn openssl without permission (it could prompt).
 */
async function runScriptOnTerminal(
  dir: string,
  code: string,
  flags: string[],
  env: Record<string, string>,
): Promise<string> {
  const script = join(dir, `script_${crypto.randomUUID()}.ts`);
  await Deno.writeTextFile(script, code);
  const quote = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
  // The shell that `script` starts finds nothing on the tested PATH: it is set for Deno only.
  const command = [`PATH=${quote(env.PATH)}`, "exec", Deno.execPath(), "run", "--no-prompt"]
    .concat("--no-config", "--quiet", ...flags, script).map((word, i) =>
      i === 0 ? word : quote(word)
    )
    .join(" ");
  const out = await new Deno.Command("script", {
    args: ["-qefc", command, "/dev/null"],
    cwd: dir,
    env: { ...env, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", TERM: "dumb" },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, decoder.decode(out.stderr) + decoder.decode(out.stdout));
  return decoder.decode(out.stdout).replaceAll("\r", "").trim();
}

Deno.test({
  name:
    "ensureCertificates on a terminal without --allow-run says openssl is missing only when it is",
  ignore: !(await commandWorks("script", ["--version"])),
  async fn(t) {
    await withTempDir(async (dir) => {
      const certDir = join(dir, "certs");
      const code = ensureScript({ certDir, host: "localhost" });
      const path = Deno.env.get("PATH") ?? "/usr/bin:/bin";
      const env = { PATH: path, HOME: Deno.env.get("HOME") ?? dir };
      await t.step("installed (found on PATH): names the flag", async () => {
        const out = await runScriptOnTerminal(dir, code, [
          "--allow-read",
          "--allow-write",
          "--allow-env=PATH",
        ], env);
        assert.equal(out, "CertError: Cannot generate certificates: run with --allow-run=openssl");
      });
      await t.step("not on PATH: says it is not installed", async () => {
        const empty = join(dir, "empty-bin");
        await Deno.mkdir(empty);
        const out = await runScriptOnTerminal(dir, code, [
          "--allow-read",
          "--allow-write",
          "--allow-env=PATH",
        ], {
          ...env,
          PATH: empty,
        });
        assert.match(
          out,
          /^CertError: Cannot generate certificates: openssl is not installed; install it/,
        );
      });
      await t.step("PATH unreadable (no --allow-env=PATH): names both causes", async () => {
        const out = await runScriptOnTerminal(dir, code, ["--allow-read", "--allow-write"], env);
        assert.match(
          out,
          /openssl is not installed, or the server may not run it: if `openssl version` works, run with --allow-run=openssl; otherwise install it/,
        );
      });
    });
  },
});

async function commandWorks(command: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(command, { args, stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

Deno.test("ensureCertificates names the missing permission flag without prompting", async (t) => {
  await withTempDir(async (dir) => {
    const certDir = join(dir, "certs");
    const script = ensureScript({ certDir, host: "localhost" });

    await t.step("no write permission", async () => {
      const out = await runScript(dir, script, ["--allow-read"]);
      assert.equal(
        out,
        `CertError: Cannot generate certificates in ${certDir}: run with --allow-write=${certDir}`,
      );
    });

    await t.step("no run permission", async () => {
      const out = await runScript(dir, script, ["--allow-read", "--allow-write"]);
      assert.equal(out, "CertError: Cannot generate certificates: run with --allow-run=openssl");
    });

    await t.step("no read permission", async () => {
      const out = await runScript(dir, script, []);
      assert.equal(
        out,
        `CertError: Cannot read certificates in ${certDir}: run with --allow-read=${certDir}`,
      );
      const certFile = join(dir, "my cert.pem");
      const cli = ensureScript({ certDir, certFile, keyFile: "k.pem", host: "localhost" });
      assert.equal(
        await runScript(dir, cli, []),
        `CertError: Cannot read certificate ${certFile}: run with --allow-read=${certFile}`,
      );
    });

    await t.step("the generated pair loads with read permission only", async () => {
      await ensureCertificates({ certDir, host: "localhost" });
      assert.equal(await runScript(dir, script, [`--allow-read=${certDir}`]), "ok");
    });

    await t.step("requirePermission names each kind of flag", async () => {
      const code = `import { hasPermission, requirePermission } from ${
        JSON.stringify(PERMISSIONS_MODULE)
      };
const descs = [
  { name: "read", path: "a" }, { name: "write", path: "certs" }, { name: "run", command: "openssl" },
  { name: "net" }, { name: "env", variable: "HOST" },
];
for (const desc of descs) {
  try {
    requirePermission(desc, "go");
    console.log("granted");
  } catch (err) {
    console.log(hasPermission(desc), err.name, err.message);
  }
}
`;
      assert.deepEqual((await runScript(dir, code, ["--allow-env=HOST"])).split("\n"), [
        "false PermissionError Cannot go: run with --allow-read=a",
        "false PermissionError Cannot go: run with --allow-write=certs",
        "false PermissionError Cannot go: run with --allow-run=openssl",
        "false PermissionError Cannot go: run with --allow-net",
        "granted",
      ]);
    });
  });
});

/** The absolute path of a system command, as `command -v` finds it. */
async function commandPath(name: string): Promise<string> {
  const out = await new Deno.Command("sh", {
    args: ["-c", 'command -v "$1"', "sh", name],
    stdout: "piped",
  }).output();
  const path = decoder.decode(out.stdout).trim();
  assert.ok(out.success && path.startsWith("/"), `${name} not found`);
  return path;
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/**
 * Writes `<dir>/bin/openssl`: a script that appends its arguments and its environment to
 * `<dir>/openssl-env.txt`, waits `reqDelay` (seconds, `openssl req` only) and then runs the real
 * openssl. It uses absolute paths only, since it may run with an empty environment.
 */
async function fakeOpenssl(
  dir: string,
  reqDelay = "0",
): Promise<{ binDir: string; dump: string; path: string }> {
  const binDir = join(dir, "bin");
  const dump = join(dir, "openssl-env.txt");
  const [openssl, env, sleep] = await Promise.all(["openssl", "env", "sleep"].map(commandPath));
  await Deno.mkdir(binDir);
  await Deno.writeTextFile(
    join(binDir, "openssl"),
    `#!/bin/sh
printf '=== %s\\n' "$*" >> ${shellQuote(dump)}
${shellQuote(env)} >> ${shellQuote(dump)}
if [ "$1" = req ]; then ${shellQuote(sleep)} ${reqDelay}; fi
exec ${shellQuote(openssl)} "$@"
`,
    { mode: 0o755 },
  );
  return { binDir, dump, path: `${binDir}:${Deno.env.get("PATH") ?? ""}` };
}

/** The environments the fake openssl saw, one `{ args, text, names }` per run. */
async function readDumps(dump: string): Promise<{ args: string; text: string; names: string[] }[]> {
  const runs = (await Deno.readTextFile(dump)).split(/^=== /m).slice(1);
  return runs.map((run) => {
    const [args, ...lines] = run.split("\n");
    const names = lines.flatMap((line) => /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(line)?.[1] ?? []);
    return { args, text: lines.join("\n"), names };
  });
}

/** Runs `main.ts --certs-only` with the permissions of `deno task certs`, scoped to `certDir`. */
async function runCertsTask(
  certDir: string,
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    // deno-fmt-ignore
    args: [
      "run", "--no-prompt", `--allow-read=${certDir}`, `--allow-write=${certDir}`,
      "--allow-run=openssl", "--allow-env=HOST", MAIN, "--certs-only", "--cert-dir", certDir,
    ],
    cwd: REPO_ROOT,
    env,
    stdin: "null",
  }).output();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

/** The SubjectPublicKeyInfo (DER) of a certificate or a private key. */
function spkiOf(pem: string): Uint8Array {
  return createPublicKey(pem).export({ type: "spki", format: "der" });
}

/** Asserts that `certDir` holds a pair whose key matches its certificate; returns its fingerprint. */
async function assertMatchingPair(certDir: string): Promise<string> {
  const certPem = await Deno.readTextFile(join(certDir, "cert.pem"));
  const keyPem = await Deno.readTextFile(join(certDir, "key.pem"));
  assert.deepEqual(spkiOf(keyPem), spkiOf(certPem), "key.pem does not match cert.pem");
  return await fingerprintOf(certPem);
}

Deno.test("openssl runs with none of the server's environment, so never sees the password", async () => {
  await withTempDir(async (dir) => {
    const secret = `password-${crypto.randomUUID()}`;
    const fake = await fakeOpenssl(dir);
    const certDir = join(dir, "certs");
    const run = await runCertsTask(certDir, {
      PATH: fake.path,
      CHAT_SERVER_PASSWORD: secret,
      CERTS_TEST_OTHER_VARIABLE: "other",
    });
    assert.equal(run.code, 0, run.stderr);

    const dumps = await readDumps(fake.dump);
    assert.deepEqual(dumps.map((d) => d.args.split(" ")[0]), ["version", "req"]);
    for (const { args, text, names } of dumps) {
      assert.ok(!text.includes(secret), `openssl ${args} saw the password`);
      assert.deepEqual(names.filter((name) => !SHELL_OWN_VARIABLES.has(name)), [], args);
    }

    const fingerprint = await assertMatchingPair(certDir);
    assert.ok(run.stdout.includes(`export CHAT_SERVER_FINGERPRINT=${fingerprint}\n`));
  });
});

Deno.test("concurrent ensureCertificates calls in one process share one generated pair", async () => {
  await withTempDir(async (dir) => {
    const certDir = join(dir, "certs");
    const pairs = await Promise.all(
      Array.from({ length: 8 }, () => ensureCertificates({ certDir, host: "localhost" })),
    );
    const fingerprint = await assertMatchingPair(certDir);
    assert.deepEqual(new Set(pairs.map((pair) => pair.fingerprint)), new Set([fingerprint]));
    assert.equal(pairs.filter((pair) => pair.generated).length, 1);
    assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem"]);
  });
});

Deno.test("separate processes started at once agree on one generated pair", async () => {
  await withTempDir(async (dir) => {
    // A slow `openssl req` makes every process reach generation while the others are in it.
    const fake = await fakeOpenssl(dir, "0.5");
    const certDir = join(dir, "certs");
    const runs = await Promise.all(
      Array.from({ length: 4 }, () => runCertsTask(certDir, { PATH: fake.path })),
    );
    const fingerprint = await assertMatchingPair(certDir);
    for (const run of runs) {
      assert.equal(run.code, 0, run.stderr);
      assert.ok(run.stdout.includes(`export CHAT_SERVER_FINGERPRINT=${fingerprint}\n`), run.stdout);
    }
    assert.equal(
      runs.filter((run) => run.stderr.includes("Generated a new certificate")).length,
      1,
    );
    assert.equal((await readDumps(fake.dump)).filter((d) => d.args.startsWith("req")).length, 1);
    assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem", "server_fingerprint.txt"]);
  });
});

Deno.test("ensureCertificates waits for the lock holder and loads the pair it writes", async () => {
  await withTempDir(async (dir) => {
    const other = await ensureCertificates({ certDir: join(dir, "other"), host: "localhost" });
    const certDir = join(dir, "certs");
    await Deno.mkdir(certDir);
    await Deno.writeTextFile(join(certDir, LOCK_FILE), "held by a test");
    let settled = false;
    const waiting = ensureCertificates({ certDir, host: "localhost" }).finally(() => {
      settled = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(settled, false, "ensureCertificates did not wait for the lock");
    await Deno.copyFile(other.certPath, join(certDir, "cert.pem"));
    await Deno.copyFile(other.keyPath, join(certDir, "key.pem"));
    await Deno.remove(join(certDir, LOCK_FILE));
    const pair = await waiting;
    assert.equal(pair.generated, false);
    assert.equal(pair.fingerprint, other.fingerprint);
    assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem"]);
  });
});

Deno.test("ensureCertificates replaces a stale lock left by a crashed process", async () => {
  await withTempDir(async (dir) => {
    const lock = join(dir, LOCK_FILE);
    await Deno.writeTextFile(lock, "left by a crashed process");
    const old = new Date(Date.now() - 120_000);
    await Deno.utime(lock, old, old);
    const started = Date.now();
    const pair = await ensureCertificates({ certDir: dir, host: "localhost" });
    assert.ok(Date.now() - started < 5_000, "a stale lock delayed generation");
    assert.equal(pair.generated, true);
    assert.equal(await assertMatchingPair(dir), pair.fingerprint);
    assert.deepEqual(await listDir(dir), ["cert.pem", "key.pem"]);
  });
});

Deno.test("a failed generation removes its lock and temporary files", async () => {
  await withTempDir(async (dir) => {
    const binDir = join(dir, "bin");
    await Deno.mkdir(binDir);
    await Deno.writeTextFile(
      join(binDir, "openssl"),
      '#!/bin/sh\nif [ "$1" = req ]; then echo "req broke" >&2; exit 1; fi\n',
      { mode: 0o755 },
    );
    const certDir = join(dir, "certs");
    const out = await runScript(dir, ensureScript({ certDir, host: "localhost" }), [
      "--allow-all",
    ], { PATH: binDir, HOME: Deno.env.get("HOME") ?? dir });
    assert.equal(out, "CertError: Cannot generate certificates: openssl failed: req broke");
    assert.deepEqual(await listDir(certDir), []);
  });
});

Deno.test("ensureCertificates never replaces a pair that appears while it generates", async () => {
  await withTempDir(async (dir) => {
    // As if a second process had wrongly judged our lock stale and written its pair meanwhile.
    const other = await ensureCertificates({ certDir: join(dir, "other"), host: "localhost" });
    const fake = await fakeOpenssl(dir, "1");
    const certDir = join(dir, "certs");
    const code = `import { ensureCertificates } from ${JSON.stringify(CERTS_MODULE)};
const pair = await ensureCertificates(${JSON.stringify({ certDir, host: "localhost" })});
console.log(pair.generated, pair.fingerprint);
`;
    const running = runScript(dir, code, ["--allow-all"], {
      PATH: fake.path,
      HOME: Deno.env.get("HOME") ?? dir,
    });
    const deadline = Date.now() + 10_000;
    while (!(await Deno.readTextFile(fake.dump).catch(() => "")).includes("=== req")) {
      assert.ok(Date.now() < deadline, "openssl req never started");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await Deno.copyFile(other.certPath, join(certDir, "cert.pem"));
    await Deno.copyFile(other.keyPath, join(certDir, "key.pem"));
    assert.equal(await running, `false ${other.fingerprint}`);
    assert.equal(await Deno.readTextFile(join(certDir, "cert.pem")), other.certPem);
    assert.equal(await Deno.readTextFile(join(certDir, "key.pem")), other.keyPem);
    assert.deepEqual(await listDir(certDir), ["cert.pem", "key.pem"]);
  });
});
