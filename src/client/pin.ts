/**
 * Certificate pinning helpers for the chat client: parsing, normalising and computing SHA-256
 * fingerprints of the server certificate.
 *
 * A fingerprint is SHA-256 over the DER of the server certificate, written as 64 lowercase hex
 * digits (`src/common/fingerprint.ts`, shared with the server). Users
 * may give it with or without colons, in any case.
 *
 * @module
 */

import { FINGERPRINT_FILE_MARKER, normalizeFingerprint } from "../common/fingerprint.ts";

/**
 * Extracts the fingerprint from the text of a `server_fingerprint.txt` file.
 *
 * Takes the first hex line after {@link FINGERPRINT_FILE_MARKER}; without the marker, the first
 * line that is a fingerprint on its own (plain or colon-separated hex). Returns `undefined` if
 * there is none.
 */
export function parseFingerprintFile(text: string): string | undefined {
  const lines = text.split(/\r?\n/);
  const marker = lines.findIndex((line) => line.trim() === FINGERPRINT_FILE_MARKER);
  if (marker >= 0) {
    const next = lines.slice(marker + 1).find((line) => line.trim() !== "");
    const pin = next === undefined ? undefined : normalizeFingerprint(next);
    if (pin) return pin;
  }
  for (const line of lines) {
    if (line.trimStart().startsWith("#")) continue;
    const pin = normalizeFingerprint(line);
    if (pin) return pin;
  }
  return undefined;
}

/**
 * Reads a fingerprint file (the server's `server_fingerprint.txt` or any file with the fingerprint
 * on a line of its own).
 *
 * @throws {Error} if the file cannot be read or holds no fingerprint.
 */
export async function readFingerprintFile(path: string): Promise<string> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new Error(`Cannot read fingerprint file ${path}: ${(error as Error).message}`);
  }
  const pin = parseFingerprintFile(text);
  if (!pin) {
    throw new Error(`Cannot find a SHA-256 fingerprint (64 hex digits) in ${path}`);
  }
  return pin;
}
