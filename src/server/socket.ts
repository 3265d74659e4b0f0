/**
 * Socket-level rules shared by the listener and the sessions.
 *
 * @module
 */

/** How long a closing connection may take to flush its last frames. */
export const CLOSE_GRACE_MS = 2000;

/** Shows an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as plain IPv4. */
export function normalizeIp(hostname: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(hostname);
  return mapped ? mapped[1] : hostname;
}
