/**
 * Permission checks that never prompt: the server asks Deno whether a permission is already granted
 * and, if not, fails with a message that names the exact flag to add.
 *
 * @module
 */

/** A required permission is not granted; the message names the flag that grants it. */
export class PermissionError extends Error {
  /** The command-line flag that would grant the permission, e.g. `--allow-write=certs`. */
  readonly flag: string;

  constructor(message: string, flag: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PermissionError";
    this.flag = flag;
  }
}

/** True if the permission is granted (uses `Deno.permissions.querySync`; never requests). */
export function hasPermission(desc: Deno.PermissionDescriptor): boolean {
  return Deno.permissions.querySync(desc).state === "granted";
}

/**
 * Throws {@linkcode PermissionError} unless the permission is granted. `what` completes the sentence
 * "Cannot ...", e.g. `requirePermission({ name: "write", path: "certs" }, "write certs")` fails with
 * "Cannot write certs: run with --allow-write=certs".
 */
export function requirePermission(desc: Deno.PermissionDescriptor, what: string): void {
  if (hasPermission(desc)) return;
  const flag = flagFor(desc);
  throw new PermissionError(`Cannot ${what}: run with ${flag}`, flag);
}

function flagFor(desc: Deno.PermissionDescriptor): string {
  switch (desc.name) {
    case "read":
    case "write":
      return desc.path === undefined
        ? `--allow-${desc.name}`
        : `--allow-${desc.name}=${pathText(desc.path)}`;
    case "run":
      return desc.command === undefined ? "--allow-run" : `--allow-run=${pathText(desc.command)}`;
    case "env":
      return desc.variable === undefined ? "--allow-env" : `--allow-env=${desc.variable}`;
    case "net":
      return desc.host === undefined ? "--allow-net" : `--allow-net=${desc.host}`;
    default:
      return `--allow-${desc.name}`;
  }
}

function pathText(path: string | URL): string {
  return path instanceof URL ? decodeURIComponent(path.pathname) : path;
}
