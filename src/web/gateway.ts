/**
 * The web port: HTTPS for the browser client's files and the `/ws` WebSocket upgrade, on TLS
 * sockets that the server's listener accepted (with the TLS port's handshake timeout and
 * connection caps). `node:http` parses the requests; nothing here writes HTML or runs a
 * template: the page is static files from `web/`, sent with a strict Content-Security-Policy.
 *
 * @module
 */
import http from "node:http";
import type { TLSSocket } from "node:tls";
import type { Logger } from "@logtape/logtape";
import { acceptKey, isValidKey } from "./websocket.ts";

/** One static file, ready to send. */
export interface Asset {
  /** The file's bytes. */
  body: Uint8Array;
  /** Its `Content-Type`. */
  type: string;
  /** Its `ETag` (a quoted digest of the body). */
  etag: string;
}

/** Content types by file extension; other files in `web/` are not served. */
const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  json: "application/json",
  webmanifest: "application/manifest+json",
  txt: "text/plain; charset=utf-8",
};

/** Headers on every response of the web port. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; " +
    "img-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; " +
    "form-action 'none'; frame-ancestors 'none'",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "X-Frame-Options": "DENY",
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Resource-Policy": "same-origin",
});

/** The browser client's files shipped with the server. */
export const WEB_DIR: URL = new URL("../../web/", import.meta.url);

/**
 * Reads the client's files (the top level of `dir`, by known extension) into memory, so that
 * serving them touches no disk and needs no permission after start.
 *
 * @throws {Deno.errors.NotCapable} without read permission for `dir`
 * @throws {Deno.errors.NotFound} when `dir` or its `index.html` is missing
 */
export async function loadAssets(dir: URL = WEB_DIR): Promise<Map<string, Asset>> {
  const assets = new Map<string, Asset>();
  for await (const entry of Deno.readDir(dir)) {
    const ext = /\.([a-z]+)$/.exec(entry.name)?.[1];
    if (!entry.isFile || !ext || !(ext in TYPES)) continue;
    const body = await Deno.readFile(new URL(entry.name, dir));
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    const etag = `"${
      Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("")
    }"`;
    assets.set(`/${entry.name}`, { body, type: TYPES[ext], etag });
  }
  const index = assets.get("/index.html");
  if (!index) throw new Deno.errors.NotFound(`No index.html in ${dir.pathname}`);
  assets.set("/", index);
  return assets;
}

/** What the gateway asks of the server. */
export interface WebGatewayOptions {
  assets: Map<string, Asset>;
  logger: Logger;
  /**
   * Takes over a socket whose WebSocket handshake has been answered (101): the server starts a
   * session on it, or sends its refusal. `head`: bytes received after the request.
   */
  upgraded: (socket: TLSSocket, head: Uint8Array) => void;
  /** Whether the socket's connection is over a cap (plain requests then get 503). */
  refused: (socket: TLSSocket) => boolean;
}

/** Largest request head accepted (bytes). */
const MAX_HEADER_SIZE = 8192;

/** HTTP on the web port. */
export class WebGateway {
  #http: http.Server;
  #options: WebGatewayOptions;

  constructor(options: WebGatewayOptions) {
    this.#options = options;
    this.#http = http.createServer(
      { maxHeaderSize: MAX_HEADER_SIZE },
      (request, response) => this.#serve(request, response),
    );
    this.#http.keepAliveTimeout = 5000;
    this.#http.on("upgrade", (request, socket, head) => {
      this.#upgrade(request, socket as TLSSocket, head);
    });
    this.#http.on("clientError", (_error: Error, socket: TLSSocket) => {
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    });
  }

  /** Starts reading HTTP requests from a TLS socket of the web port. */
  connection(socket: TLSSocket): void {
    this.#http.emit("connection", socket);
  }

  #serve(request: http.IncomingMessage, response: http.ServerResponse): void {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) response.setHeader(name, value);
    const socket = request.socket as TLSSocket;
    if (this.#options.refused(socket)) {
      response.shouldKeepAlive = false;
      this.#plain(response, 503, "The server is full; try again later.\n");
      return;
    }
    const path = (request.url ?? "/").split("?")[0];
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.setHeader("Allow", "GET, HEAD");
      this.#plain(response, 405, "Method not allowed.\n");
      return;
    }
    if (path === "/ws") {
      response.setHeader("Upgrade", "websocket");
      this.#plain(response, 426, "This address takes WebSocket connections only.\n");
      return;
    }
    const asset = this.#options.assets.get(path);
    if (!asset) {
      this.#plain(response, 404, "Not found.\n");
      return;
    }
    response.setHeader("ETag", asset.etag);
    response.setHeader("Cache-Control", "no-cache");
    if (request.headers["if-none-match"] === asset.etag) {
      response.writeHead(304);
      response.end();
      return;
    }
    response.writeHead(200, {
      "Content-Type": asset.type,
      "Content-Length": String(asset.body.length),
    });
    if (request.method === "HEAD") response.end();
    else response.end(asset.body);
  }

  #plain(response: http.ServerResponse, status: number, text: string): void {
    response.writeHead(status, {
      "Content-Type": "text/plain; charset=utf-8",
      "Content-Length": String(new TextEncoder().encode(text).length),
    });
    response.end(text);
  }

  /**
   * A WebSocket upgrade: checks the request (RFC 6455 section 4.2.1) and its `Origin`, answers
   * 101 and hands the socket to the server, or answers with an error status and closes.
   */
  #upgrade(request: http.IncomingMessage, socket: TLSSocket, head: Uint8Array): void {
    const path = (request.url ?? "/").split("?")[0];
    const { headers } = request;
    const reject = (status: number, reason: string, extra = "") => {
      this.#options.logger.debug("Refused WebSocket upgrade from {ip}: {status} {reason}", {
        ip: socket.remoteAddress ?? "",
        status,
        reason,
      });
      const body = `${reason}\n`;
      const lines = Object.entries(SECURITY_HEADERS).map(([name, value]) => `${name}: ${value}`);
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n` +
          `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\n` +
          `${extra}${lines.join("\r\n")}\r\n\r\n${body}`,
      );
    };
    if (path !== "/ws") return reject(404, "Not found.");
    if (request.method !== "GET") return reject(405, "Method not allowed.");
    if (headers.upgrade?.toLowerCase() !== "websocket") {
      return reject(400, "Only WebSocket upgrades are accepted.");
    }
    if (headers["sec-websocket-version"] !== "13") {
      return reject(426, "WebSocket version 13 is required.", "Sec-WebSocket-Version: 13\r\n");
    }
    const key = headers["sec-websocket-key"];
    if (!isValidKey(key)) return reject(400, "Bad Sec-WebSocket-Key.");
    // A browser always sends Origin: a page from another site must not use a visitor's browser
    // (and its trust in this certificate) to talk to the room. Clients without Origin are not
    // browsers, and could send any Origin anyway.
    const origin = headers.origin;
    if (
      origin !== undefined && origin.toLowerCase() !== `https://${headers.host ?? ""}`.toLowerCase()
    ) {
      return reject(403, "Cross-origin WebSocket connections are refused.");
    }
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`,
    );
    this.#options.upgraded(socket, head);
  }

  /** Releases the HTTP machinery (the sockets are the server's to close). */
  close(): void {
    this.#http.close();
  }
}
