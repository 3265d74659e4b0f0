/**
 * The server's name and version, as the `welcome` frame reports them.
 *
 * @module
 */

/** The protocol-level version of this server (2: names, presence, ids, history). */
export const SERVER_VERSION = "2.0.0";
/** `server` in the `welcome` frame. */
export const SERVER_SOFTWARE = `chat-server/${SERVER_VERSION}`;
