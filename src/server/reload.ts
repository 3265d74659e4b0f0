/**
 * What `SIGHUP` does: re-read the certificate and key (`--cert`/`--key`, or the cert dir) and the
 * `--password-file`, hand what is usable to {@link ChatServer.reload}, and sum it up in one log
 * line. A file that cannot be used keeps the old certificate or password and says why; nothing
 * here throws.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { formatFingerprint } from "../common/fingerprint.ts";
import { readCertificates } from "./certs.ts";
import { readPassword } from "./password.ts";
import type { ChatServer } from "./server.ts";

/** Where the files come from: the server's configuration. */
export interface ReloadSources {
  certDir: string;
  certFile?: string;
  keyFile?: string;
  /** `--password-file`; without it the password is not reloaded. */
  passwordFile?: string;
}

/** The outcome of {@link reloadFromFiles}: what changed, for the log, and whether all of it took. */
export interface ReloadReport {
  line: string;
  ok: boolean;
}

/**
 * Re-reads the certificate, key and password file and applies them to `server`.
 *
 * @param changed called with the new fingerprint when the certificate changed (prints the
 * banner and rewrites `server_fingerprint.txt`)
 */
export async function reloadFromFiles(
  server: ChatServer,
  sources: ReloadSources,
  changed: (fingerprint: string) => Promise<void> = () => Promise.resolve(),
): Promise<ReloadReport> {
  const parts: string[] = [];
  let ok = true;
  let newFingerprint: string | undefined;
  try {
    const pair = await readCertificates(sources);
    const result = await server.reload({ cert: pair.certPem, key: pair.keyPem });
    if (result.certificateChanged) {
      parts.push(`certificate changed (fingerprint ${formatFingerprint(result.fingerprint)})`);
      newFingerprint = result.fingerprint;
    } else parts.push("certificate unchanged");
  } catch (error) {
    ok = false;
    parts.push(`kept the old certificate: ${messageOf(error)}`);
  }
  if (newFingerprint !== undefined) {
    // The certificate is in use by now: a banner that cannot be written does not undo that.
    try {
      await changed(newFingerprint);
    } catch (error) {
      ok = false;
      parts.push(`cannot announce the new fingerprint: ${messageOf(error)}`);
    }
  }
  if (sources.passwordFile === undefined) {
    parts.push("password not reloaded (it did not come from --password-file)");
  } else {
    try {
      const password = await readPassword({ file: sources.passwordFile });
      const result = await server.reload({ password });
      parts.push(result.passwordChanged ? "password changed" : "password unchanged");
    } catch (error) {
      ok = false;
      parts.push(`kept the old password: ${messageOf(error)}`);
    }
  }
  return { line: parts.join("; "), ok };
}

/**
 * Reloads on every `SIGHUP` (one reload at a time; a signal during one runs another after it)
 * and logs the outcome. Returns a function that stops listening and waits for a reload in
 * progress. Does nothing on Windows, which has no `SIGHUP`.
 */
export function reloadOnSighup(
  server: ChatServer,
  sources: ReloadSources,
  options: {
    logger: Logger;
    changed?: (fingerprint: string) => Promise<void>;
    /** Reload once at once (a SIGHUP arrived before this handler was installed). */
    now?: boolean;
  },
): () => Promise<void> {
  if (Deno.build.os === "windows") return () => Promise.resolve();
  let chain = Promise.resolve();
  const onHangup = () => {
    chain = chain.then(async () => {
      if (server.closing) return;
      const { line, ok } = await reloadFromFiles(server, sources, options.changed);
      // A placeholder, not the line itself: an error message may hold braces.
      if (ok) options.logger.info("Reload: {summary}", { summary: line });
      else options.logger.warn("Reload: {summary}", { summary: line });
    }).catch((error) => {
      // Never a rejected chain: every later SIGHUP must still reload.
      options.logger.error("Reload failed: {error}", { error: String(error) });
    });
  };
  Deno.addSignalListener("SIGHUP", onHangup);
  if (options.now) onHangup();
  return () => {
    Deno.removeSignalListener("SIGHUP", onHangup);
    return chain;
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
