/**
 * Certificate fingerprints, as the server prints them and the client pins them: SHA-256 over the
 * DER of the certificate, written as 64 lowercase hex digits (or colon-separated byte pairs for
 * people to read).
 *
 * @module
 */

/** Marker line in `server_fingerprint.txt` that precedes the bare hex fingerprint. */
export const FINGERPRINT_FILE_MARKER = "# Fingerprint (for client verification):";

const HEX64 = /^[0-9a-f]{64}$/;

/** Computes the fingerprint (lowercase hex SHA-256) of a DER-encoded certificate. */
export async function fingerprintOfDer(der: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", der as Uint8Array<ArrayBuffer>);
  return new Uint8Array(digest).toHex();
}

/** Formats a hex fingerprint as colon-separated byte pairs: `"a1b2"` becomes `"a1:b2"`. */
export function formatFingerprint(hex: string): string {
  if (!/^(?:[0-9a-f]{2})+$/.test(hex)) {
    throw new TypeError(`Cannot format fingerprint: "${hex}" is not lowercase hex`);
  }
  return hex.match(/../g)!.join(":");
}

/**
 * Normalises a fingerprint given by a user: strips colons and surrounding space, lowercases.
 * Returns `undefined` unless the result is exactly 64 hex digits.
 */
export function normalizeFingerprint(text: string): string | undefined {
  const hex = text.trim().replaceAll(":", "").toLowerCase();
  return HEX64.test(hex) ? hex : undefined;
}
