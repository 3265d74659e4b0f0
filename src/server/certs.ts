/**
 * Server certificates: load an existing pair or generate a self-signed ECDSA P-256 pair with an
 * `openssl` subprocess, compute the SHA-256 fingerprint, and render the fingerprint banner and
 * `server_fingerprint.txt`. This module never prints; callers print the banner.
 *
 * Generation is exclusive across processes: the process that creates {@linkcode LOCK_FILE} in the
 * cert dir generates the pair, the others wait for it and load that pair. The pair is hard-linked
 * into place, so an existing `cert.pem` or `key.pem` is never replaced.
 *
 * @module
 */

import { createPrivateKey, createPublicKey } from "node:crypto";
import { isIP } from "node:net";
import { join } from "node:path";
import { hasPermission, PermissionError, requirePermission } from "../common/permissions.ts";
import {
  FINGERPRINT_FILE_MARKER,
  fingerprintOfDer,
  formatFingerprint,
} from "../common/fingerprint.ts";

/** File name of the certificate inside the cert dir. */
export const CERT_FILE = "cert.pem";
/** File name of the private key inside the cert dir. */
export const KEY_FILE = "key.pem";
/** File name of the fingerprint file inside the cert dir. */
export const FINGERPRINT_FILE = "server_fingerprint.txt";
/** File name of the lock, inside the cert dir, held by the process that generates the pair. */
export const LOCK_FILE = ".certs.lock";

/**
 * A lock this old (by its mtime, or by how long this process has watched it) was left by a crashed
 * process and is removed. Generating a pair takes about 10 ms here, so a live holder never gets
 * near it; if one ever did, the hard links still keep a single, matching pair.
 */
const LOCK_STALE_MS = 10_000;
const LOCK_POLL_MS = 25;

const CERT_DAYS = 825;
const RULE = "=".repeat(70);
const WILDCARD_HOSTS = new Set(["0.0.0.0", "::"]);
const LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
const HOSTNAME = new RegExp(`^(?=.{1,253}$)${LABEL}(?:\\.${LABEL})*$`, "i");
const PEM_CERT = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/;

/** Where to find or create the certificates. */
export interface CertOptions {
  /** Directory holding `cert.pem`, `key.pem` and `server_fingerprint.txt` (created if missing). */
  certDir: string;
  /** An existing certificate (PEM); must be given together with `keyFile`. */
  certFile?: string;
  /** The private key (PEM) of `certFile`; must be given together with `certFile`. */
  keyFile?: string;
  /** The host the server binds; added to the subjectAltName of a generated certificate. */
  host: string;
}

/** A certificate and its matching private key, ready for the TLS listener. */
export interface CertPair {
  /** The certificate chain, PEM. */
  certPem: string;
  /** The private key, PEM. */
  keyPem: string;
  /** SHA-256 of the DER of the first certificate: lowercase hex, 64 characters, no colons. */
  fingerprint: string;
  /** True if this call generated the pair. */
  generated: boolean;
  /** Where the certificate was read from. */
  certPath: string;
  /** Where the key was read from. */
  keyPath: string;
}

/** A certificate problem the user must fix; the message names the fix. */
export class CertError extends Error {
  /** An error whose message says what to fix. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CertError";
  }
}

/**
 * Returns the server's certificate pair: `certFile`/`keyFile` if given, else `cert.pem`/`key.pem`
 * from `certDir`, generating them with `openssl` when neither exists. Checks that the key matches
 * the certificate. Never overwrites an existing file and never prompts for permissions.
 *
 * @throws {CertError} with a message that says what to install, which flag to grant or which file
 * is wrong
 */
export async function ensureCertificates(options: CertOptions): Promise<CertPair> {
  const { certDir, certFile, keyFile } = options;
  if (certFile !== undefined && keyFile !== undefined) {
    return await loadPair(certFile, keyFile, false);
  }
  if (certFile !== undefined || keyFile !== undefined) {
    const [given, missing] = certFile !== undefined ? ["--cert", "--key"] : ["--key", "--cert"];
    throw new CertError(
      `Cannot use ${given} without ${missing}: pass both --cert FILE and --key FILE`,
    );
  }
  const host = checkHost(options.host);
  const certPath = join(certDir, CERT_FILE);
  const keyPath = join(certDir, KEY_FILE);
  need({ name: "read", path: certDir }, `read certificates in ${certDir}`);
  const [hasCert, hasKey] = [await exists(certPath), await exists(keyPath)];
  if (hasCert && hasKey) return await loadPair(certPath, keyPath, false);
  // Half a pair while the lock is held: another process is placing its pair; wait for it.
  if ((hasCert || hasKey) && !(await exists(join(certDir, LOCK_FILE)))) {
    throw halfPairError(certPath, keyPath, hasCert);
  }
  const generated = await generate(certDir, host);
  return await loadPair(certPath, keyPath, generated);
}

/**
 * Reads the pair {@link ensureCertificates} would use, without generating one: for a reload,
 * where a missing file is an error to report, not a reason for a new certificate.
 *
 * @throws {CertError} if a file is missing or unreadable, or the key does not match
 */
export async function readCertificates(
  options: Pick<CertOptions, "certDir" | "certFile" | "keyFile">,
): Promise<CertPair> {
  const { certDir, certFile, keyFile } = options;
  if (certFile !== undefined && keyFile !== undefined) {
    return await loadPair(certFile, keyFile, false);
  }
  return await loadPair(join(certDir, CERT_FILE), join(certDir, KEY_FILE), false);
}

/** SHA-256 over the DER of the first certificate in `certPem`, as lowercase hex without colons. */
export async function fingerprintOf(certPem: string): Promise<string> {
  const cert = firstCertificate(certPem);
  if (cert === null) throw new CertError("Cannot compute fingerprint: no PEM certificate found");
  return await fingerprintOfDer(cert.der);
}

/** The banner printed at every start (the seed's format), ending with a newline. */
export function fingerprintBanner(hex: string): string {
  return [
    RULE,
    "SERVER CERTIFICATE FINGERPRINT:",
    formatFingerprint(hex),
    "",
    "For secure client connections:",
    `export CHAT_SERVER_FINGERPRINT=${hex}`,
    "",
    "Clients without fingerprint will show security warning",
    RULE,
    "",
  ].join("\n");
}

/** The contents of `server_fingerprint.txt` (the seed's format), ending with a newline. */
export function fingerprintFileText(hex: string, generated: Date): string {
  return [
    "# Server Certificate Information",
    `# Generated: ${generated.toISOString()}`,
    "",
    FINGERPRINT_FILE_MARKER,
    hex,
    "",
    "# Formatted:",
    formatFingerprint(hex),
    "",
    "# Usage:",
    `export CHAT_SERVER_FINGERPRINT=${hex}`,
    "",
  ].join("\n");
}

/**
 * Atomically (temp file + rename) writes `server_fingerprint.txt` into `certDir` and returns its
 * path. Throws {@linkcode CertError} naming `--allow-write=<certDir>` if writing is not allowed.
 */
export async function writeFingerprintFile(
  certDir: string,
  hex: string,
  now: Date = new Date(),
): Promise<string> {
  const path = join(certDir, FINGERPRINT_FILE);
  need({ name: "write", path: certDir }, `write ${path}`);
  const tmp = join(certDir, `.${FINGERPRINT_FILE}.${crypto.randomUUID()}.tmp`);
  try {
    await Deno.writeTextFile(tmp, fingerprintFileText(hex, now), { mode: 0o644 });
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new CertError(`Cannot write ${path}: ${messageOf(err)}`, { cause: err });
  }
  return path;
}

async function loadPair(certPath: string, keyPath: string, generated: boolean): Promise<CertPair> {
  const certPem = await readPem(certPath, "certificate");
  const keyPem = await readPem(keyPath, "private key");
  const cert = firstCertificate(certPem);
  if (cert === null) throw new CertError(`Cannot use ${certPath}: no PEM certificate found in it`);
  const fingerprint = await fingerprintOf(cert.block);
  const certKey = publicKeyDer(certPath, () => createPublicKey(cert.block));
  const ownKey = publicKeyDer(keyPath, () => createPublicKey(createPrivateKey(keyPem)));
  if (!certKey.equals(ownKey)) {
    throw new CertError(
      `Cannot use ${keyPath}: the key does not match the certificate ${certPath}`,
    );
  }
  return { certPem, keyPem, fingerprint, generated, certPath, keyPath };
}

async function readPem(path: string, what: string): Promise<string> {
  need({ name: "read", path }, `read ${what} ${path}`);
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound ? "file not found" : messageOf(err);
    throw new CertError(`Cannot read ${what} ${path}: ${reason}`, { cause: err });
  }
}

function publicKeyDer(path: string, key: () => ReturnType<typeof createPublicKey>) {
  try {
    return key().export({ type: "spki", format: "der" });
  } catch (err) {
    throw new CertError(
      `Cannot use ${path}: not a valid unencrypted PEM file (${messageOf(err)})`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Makes sure `cert.pem` and `key.pem` exist in `certDir`: generates them while holding the lock,
 * or waits for the process that holds it. Returns true if this call generated the pair.
 */
async function generate(certDir: string, host: string): Promise<boolean> {
  need({ name: "write", path: certDir }, `generate certificates in ${certDir}`);
  await checkOpenssl();
  try {
    await Deno.mkdir(certDir, { recursive: true });
  } catch (err) {
    throw new CertError(`Cannot create ${certDir}: ${messageOf(err)}`, { cause: err });
  }
  const lockPath = join(certDir, LOCK_FILE);
  let watched: { id: string; since: number } | undefined;
  for (;;) {
    const token = await createLock(lockPath);
    if (token !== null) {
      try {
        return await generateLocked(certDir, host);
      } finally {
        await releaseLock(lockPath, token);
      }
    }
    const lock = await lockId(lockPath);
    if (lock === null) continue; // released since we tried
    const now = Date.now();
    if (watched?.id !== lock.id) watched = { id: lock.id, since: now };
    // The watch time bounds the wait even if the lock's mtime comes from a skewed clock.
    if (Math.max(now - lock.mtime, now - watched.since) >= LOCK_STALE_MS) {
      await removeStaleLock(lockPath, lock.id);
    } else {
      await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
    }
  }
}

/** Generates the pair into a private temp dir and links it into place; call with the lock held. */
async function generateLocked(certDir: string, host: string): Promise<boolean> {
  const certPath = join(certDir, CERT_FILE);
  const keyPath = join(certDir, KEY_FILE);
  const [hasCert, hasKey] = [await exists(certPath), await exists(keyPath)];
  if (hasCert && hasKey) return false; // written by the previous holder of the lock
  if (hasCert || hasKey) throw halfPairError(certPath, keyPath, hasCert);
  let tmpDir: string;
  try {
    tmpDir = await Deno.makeTempDir({ dir: certDir, prefix: ".tmp-certs-" }); // mode 0700
  } catch (err) {
    throw new CertError(`Cannot create ${certDir}: ${messageOf(err)}`, { cause: err });
  }
  try {
    const tmpKey = join(tmpDir, KEY_FILE);
    const tmpCert = join(tmpDir, CERT_FILE);
    const { success, stderr } = await opensslCommand(opensslArgs(host, tmpKey, tmpCert), "piped")
      .output();
    if (!success) {
      const detail = new TextDecoder().decode(stderr).trim();
      throw new CertError(`Cannot generate certificates: openssl failed: ${detail}`);
    }
    if (Deno.build.os !== "windows") {
      await Deno.chmod(tmpKey, 0o600);
      await Deno.chmod(tmpCert, 0o644);
    }
    // Whoever links cert.pem first owns the pair (a process that wrongly judged our lock stale
    // may be generating too); the loser loads the winner's pair. Certificate first: a crash in
    // between leaves only the public half behind.
    if (!(await linkNew(tmpCert, certPath))) return await waitForFile(keyPath);
    await linkNew(tmpKey, keyPath);
    return true;
  } catch (err) {
    if (err instanceof CertError) throw err;
    throw new CertError(`Cannot generate certificates: ${messageOf(err)}`, { cause: err });
  } finally {
    await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
  }
}

/**
 * Hard-links `from` as `to`, which never replaces an existing `to`; returns false if `to` exists.
 * On a file system without hard links it checks and renames instead (safe under the lock).
 */
async function linkNew(from: string, to: string): Promise<boolean> {
  try {
    await Deno.link(from, to);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) return false;
    if (await exists(to)) return false;
    await Deno.rename(from, to);
    return true;
  }
}

/** Waits (bounded) for the process that won the race for `cert.pem` to link its `key.pem`. */
async function waitForFile(path: string): Promise<false> {
  const deadline = Date.now() + LOCK_STALE_MS;
  while (!(await exists(path)) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
  }
  return false;
}

/** Creates the lock; returns the text written into it, or null if another process holds it. */
async function createLock(lockPath: string): Promise<string | null> {
  const token = `pid ${Deno.pid}, ${new Date().toISOString()}, ${crypto.randomUUID()}\n`;
  const bytes = new TextEncoder().encode(token);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(lockPath, { createNew: true, write: true });
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) return null;
    throw new CertError(`Cannot create ${lockPath}: ${messageOf(err)}`, { cause: err });
  }
  try {
    for (let written = 0; written < bytes.length;) {
      written += await file.write(bytes.subarray(written));
    }
  } catch (err) {
    file.close();
    await Deno.remove(lockPath).catch(() => {}); // created by us just above
    throw new CertError(`Cannot write ${lockPath}: ${messageOf(err)}`, { cause: err });
  }
  file.close();
  return token;
}

/** Removes the lock if it still holds our token (it is not ours if it was judged stale). */
async function releaseLock(lockPath: string, token: string): Promise<void> {
  try {
    if (await Deno.readTextFile(lockPath) === token) await Deno.remove(lockPath);
  } catch {
    // Gone already, or unreadable: then it ages into a stale lock that the next start removes.
  }
}

/** The lock's identity (mtime, inode, size) and mtime in ms, or null if there is no lock. */
async function lockId(lockPath: string): Promise<{ id: string; mtime: number } | null> {
  try {
    const info = await Deno.stat(lockPath);
    const mtime = info.mtime?.getTime() ?? Date.now();
    return { id: `${info.mtime?.getTime()}:${info.ino}:${info.size}`, mtime };
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new CertError(`Cannot check ${lockPath}: ${messageOf(err)}`, { cause: err });
  }
}

/** Removes the lock if it is still the stale one we saw, not a new one just created. */
async function removeStaleLock(lockPath: string, id: string): Promise<void> {
  if ((await lockId(lockPath))?.id !== id) return;
  try {
    await Deno.remove(lockPath);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw new CertError(
      `Cannot remove the stale lock ${lockPath}: ${messageOf(err)}; delete it by hand`,
      { cause: err },
    );
  }
}

const OPENSSL_MISSING = "Cannot generate certificates: openssl is not installed; install it " +
  "(e.g. apt-get install openssl) or pass --cert and --key";

/**
 * Makes sure `openssl` can run. Without `--allow-run=openssl` that may be because it is missing
 * (Deno drops `--allow-run=openssl` when no `openssl` is on PATH, as under `deno task start`), so
 * the error must say which. Deno looks the program up before it checks the permission: spawning
 * it says "not found" for a missing one, and "not allowed" (never a prompt) for one that is there
 * when prompts are impossible (no terminal). On a terminal a spawn could prompt, so PATH is
 * searched instead where the permissions allow (`--allow-env=PATH` and reading its folders);
 * where they do not, the error names both causes.
 */
async function checkOpenssl(): Promise<void> {
  const granted = hasPermission({ name: "run", command: "openssl" });
  if (!granted && Deno.stdin.isTerminal()) {
    const found = await opensslOnPath();
    if (found === false) throw new CertError(OPENSSL_MISSING);
    if (found === true) need({ name: "run", command: "openssl" }, "generate certificates");
    throw new CertError(
      "Cannot generate certificates: openssl is not installed, or the server may not run it: " +
        "if `openssl version` works, run with --allow-run=openssl; otherwise install it " +
        "(e.g. apt-get install openssl) or pass --cert and --key",
    );
  }
  try {
    await opensslCommand(["version"], "null").output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new CertError(OPENSSL_MISSING, { cause: err });
    if (!granted) need({ name: "run", command: "openssl" }, "generate certificates");
    throw new CertError(`Cannot run openssl: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * Whether an `openssl` file is in a folder of PATH: `true` or `false` when that could be told
 * without asking for a permission, `undefined` when not (no `--allow-env=PATH`, or a folder that
 * may not be read).
 */
async function opensslOnPath(): Promise<boolean | undefined> {
  if (!hasPermission({ name: "env", variable: "PATH" })) return undefined;
  let unknown = false;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    const path = `${dir.replace(/\/$/, "")}/openssl`;
    if (!hasPermission({ name: "read", path })) {
      unknown = true;
      continue;
    }
    try {
      if ((await Deno.stat(path)).isFile) return true;
    } catch {
      // Not there.
    }
  }
  return unknown ? undefined : false;
}

/**
 * An `openssl` command with an empty environment: the server's (`CHAT_SERVER_PASSWORD` included)
 * is none of its business. No variable is needed: Deno finds `openssl` on the server's own PATH
 * when the child has none (as `--allow-run=openssl` did), so no `--allow-env=PATH` is needed
 * either; and every setting of `openssl req` is on its command line, so it needs no
 * `OPENSSL_CONF` (its built-in default config is used).
 */
function opensslCommand(args: string[], stderr: "null" | "piped"): Deno.Command {
  return new Deno.Command("openssl", {
    args,
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr,
  });
}

function opensslArgs(host: string, keyPath: string, certPath: string): string[] {
  const wildcard = WILDCARD_HOSTS.has(host);
  const commonName = wildcard || host.length > 64 ? "localhost" : host;
  const altNames = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"];
  const own = `${isIP(host) ? "IP" : "DNS"}:${host.toLowerCase()}`;
  if (!wildcard && !altNames.includes(own)) altNames.push(own);
  // deno-fmt-ignore
  return [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", keyPath, "-out", certPath, "-days", String(CERT_DAYS), "-subj", `/CN=${commonName}`,
    "-addext", "basicConstraints=critical,CA:FALSE",
    "-addext", `subjectAltName=${altNames.join(",")}`,
    "-addext", "extendedKeyUsage=serverAuth",
    "-addext", "keyUsage=critical,digitalSignature",
  ];
}

function halfPairError(certPath: string, keyPath: string, hasCert: boolean): CertError {
  const [present, missing] = hasCert ? [certPath, keyPath] : [keyPath, certPath];
  return new CertError(
    `Cannot use ${present}: ${missing} is missing; restore ${missing}, or delete ${present} ` +
      "to generate a new pair",
  );
}

/** Returns the host to put in the certificate, or throws if it is not a hostname or IP literal. */
function checkHost(host: string): string {
  if (host === "") return "localhost";
  if (isIP(host) !== 0 && /^[0-9a-f:.]+$/i.test(host)) return host;
  if (HOSTNAME.test(host)) return host;
  throw new CertError(
    `Cannot generate certificates for host ${JSON.stringify(host)}: ` +
      "use a plain hostname or IP address",
  );
}

/** The first PEM certificate block and its DER bytes, or `null` if there is none. */
function firstCertificate(pem: string): { block: string; der: Uint8Array<ArrayBuffer> } | null {
  const match = PEM_CERT.exec(pem);
  if (match === null) return null;
  try {
    return { block: match[0], der: Uint8Array.fromBase64(match[1].replace(/\s+/g, "")) };
  } catch {
    return null;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw new CertError(`Cannot check ${path}: ${messageOf(err)}`, { cause: err });
  }
}

/** `requirePermission`, rethrown as a CertError. */
function need(desc: Deno.PermissionDescriptor, what: string): void {
  try {
    requirePermission(desc, what);
  } catch (err) {
    if (err instanceof PermissionError) throw new CertError(err.message, { cause: err });
    throw err;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
