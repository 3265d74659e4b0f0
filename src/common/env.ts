/**
 * Environment variables, read the same way by the server and the client.
 *
 * @module
 */

/** Reads one environment variable: its value, or `undefined` when unset. */
export type EnvReader = (name: string) => string | undefined;

/**
 * Reads an environment variable without ever prompting: a variable the process may not read
 * counts as unset, and so does an empty one (`HOST= deno task start` means "no HOST", as
 * `${HOST:-default}` does in a shell).
 */
export function readEnv(name: string): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return undefined;
  }
  const value = Deno.env.get(name);
  return value === "" ? undefined : value;
}
