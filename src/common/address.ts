/**
 * Host and port values from flags and the environment, validated by one set of rules for the
 * server (which may listen on port 0, a free port) and the client (which connects to 1 to 65535).
 *
 * @module
 */

/**
 * Validates a host name or address.
 *
 * @throws {RangeError} if it is empty
 */
export function parseHost(text: string): string {
  if (text.trim() === "") throw new RangeError("Invalid host: it is empty");
  return text.trim();
}

/**
 * Parses a decimal port number from `min` (0 lets the system pick a free port) to 65535.
 *
 * @throws {RangeError} naming the value and the allowed range
 */
export function parsePort(text: string, min: 0 | 1, what = "port"): number {
  const digits = text.trim();
  const port = Number(digits);
  if (!/^\d+$/.test(digits) || port < min || port > 65535) {
    throw new RangeError(`Invalid ${what} ${JSON.stringify(text)}: expected ${min} to 65535`);
  }
  return port;
}
