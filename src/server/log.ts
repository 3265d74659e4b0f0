/**
 * Logging through LogTape: levelled text lines (default) or JSON lines, written to stderr.
 *
 * @module
 */
import {
  configure,
  getJsonLinesFormatter,
  getTextFormatter,
  type LogRecord,
  reset,
  type Sink,
} from "@logtape/logtape";
import type { ServerConfig } from "./config.ts";

const ENCODER = new TextEncoder();

/**
 * Builds the text or JSON-lines formatter. Text lines look like
 * `2026-11-25 12:00:00.000 +00:00 [info] server started on port -> 4000 and ip -> 127.0.0.1`.
 */
export function makeFormatter(format: ServerConfig["logFormat"]): (record: LogRecord) => string {
  if (format === "text") return getTextFormatter({ level: "full", value: "bare" });
  // LogTape's JSON-lines layout, with the message rendered like the text one (strings bare, not
  // quoted), so `message` reads the same in both formats; `properties` keeps the typed values.
  const json = getJsonLinesFormatter({ message: "template" });
  return (record) => {
    const line = JSON.parse(json(record));
    line.message = record.message
      .map((part, i) => i % 2 === 0 || typeof part === "string" ? part : JSON.stringify(part))
      .join("");
    return JSON.stringify(line) + "\n";
  };
}

/** A sink that writes each formatted line to stderr synchronously, so lines are never lost. */
export function stderrSink(format: ServerConfig["logFormat"]): Sink {
  const formatter = makeFormatter(format);
  return (record) => {
    const bytes = ENCODER.encode(formatter(record));
    let offset = 0;
    while (offset < bytes.length) offset += Deno.stderr.writeSync(bytes.subarray(offset));
  };
}

/** Configures the `chat-server` loggers; `sink` defaults to {@link stderrSink}. */
export async function setupLogging(
  options: { level: ServerConfig["logLevel"]; format: ServerConfig["logFormat"]; sink?: Sink },
): Promise<void> {
  await configure({
    reset: true,
    sinks: { out: options.sink ?? stderrSink(options.format) },
    loggers: [
      { category: ["chat-server"], lowestLevel: options.level, sinks: ["out"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["out"] },
    ],
  });
}

/** Removes the logging configuration (for tests). */
export async function resetLogging(): Promise<void> {
  await reset();
}
