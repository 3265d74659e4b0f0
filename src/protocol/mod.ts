/**
 * The chat protocol, shared by the server, the web client and the terminal client: framing
 * ({@link FrameDecoder}, {@link encodeFrame}), messages ({@link parseAuth}, {@link parseChat},
 * {@link encodeBroadcast}) and the error table ({@link ERRORS}).
 *
 * @module
 */
export * from "./errors.ts";
export * from "./frames.ts";
export * from "./messages.ts";
