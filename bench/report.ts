/**
 * Medians over runs and the report: a Markdown table with one row per scenario, the servers
 * side by side, and whether the target holds; then, for a scenario that also measured
 * other servers (the transport floors of scenario 4), a table with one row per server.
 *
 * @module
 */
import type { Metrics, MetricSpec, RunResult, Scenario, Sizes } from "./scenarios.ts";

/** Everything measured for one scenario. */
export interface ScenarioReport {
  scenario: Scenario;
  /** Runs by server name, in run order. */
  runs: Record<string, RunResult[]>;
}

/** The median of `values` (NaN if none or any is NaN). */
export function median(values: readonly number[]): number {
  if (values.length === 0 || values.some(Number.isNaN)) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * The median of every metric over `runs`, or the largest value for a metric whose spec in
 * `specs` says `over: "max"` (NaN if any run's is NaN).
 */
export function medians(runs: readonly RunResult[], specs: readonly MetricSpec[] = []): Metrics {
  const keys = new Set(runs.flatMap((run) => Object.keys(run.metrics)));
  const largest = new Set(specs.filter((spec) => spec.over === "max").map((spec) => spec.key));
  const out: Metrics = {};
  for (const key of keys) {
    const values = runs.map((run) => run.metrics[key] ?? NaN);
    out[key] = !largest.has(key)
      ? median(values)
      : values.some(Number.isNaN)
      ? NaN
      : Math.max(...values);
  }
  return out;
}

/** Formats a number with thousands separators and `digits` decimals; `n/a` for NaN. */
export function formatNumber(value: number, digits: number): string {
  if (!Number.isFinite(value)) return "n/a";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** One cell: every metric of the scenario as `label value unit`. */
export function formatMetrics(scenario: Scenario, metrics: Metrics | undefined): string {
  if (metrics === undefined) return "—";
  return scenario.metrics.map(({ key, label, unit, digits, format }) => {
    if (format) return format(metrics[key]);
    const value = formatNumber(metrics[key], digits);
    return `${label} ${value}${unit ? " " + unit : ""}`;
  }).join("; ");
}

/** `ours / other` of the scenario's first metric, e.g. `1.23x`. */
function ratio(scenario: Scenario, ours?: Metrics, reference?: Metrics): string {
  const key = scenario.metrics[0].key;
  if (!ours || !reference || !(reference[key] > 0) || !Number.isFinite(ours[key])) return "—";
  return `${(ours[key] / reference[key]).toFixed(2)}x`;
}

function verdict(
  scenario: Scenario,
  all: Record<string, Metrics>,
  ours?: Metrics,
  reference?: Metrics,
): string {
  if (!scenario.target || !ours) return "—";
  const holds = scenario.target.check(ours, reference, all);
  return holds === null ? "n/a" : holds ? "yes" : "**no**";
}

/**
 * The report table. `primary` is the server the targets apply to (ours, or the `--target`);
 * `reference` the one it is compared with, if it ran; `quick` runs are not judged.
 */
export function renderTable(
  reports: readonly ScenarioReport[],
  sizes: Sizes,
  servers: { primary: string; reference?: string; quick?: boolean },
): string {
  const { primary, reference, quick } = servers;
  const header = reference
    ? `| # | Scenario | ${primary} | ${reference} | ${primary}/${reference} (1st figure) | Target | Holds |`
    : `| # | Scenario | ${primary} | Target | Holds |`;
  const rule = reference ? "|---|---|---|---|---|---|---|" : "|---|---|---|---|---|";
  const rows = reports.map(({ scenario, runs }) => {
    const all = allMedians(scenario, runs);
    const ours = all[primary];
    const ref = reference ? all[reference] : undefined;
    const count = runs[primary]?.length ?? 0;
    const name = `${scenario.title}: ${scenario.describe(sizes)}; median of ${count} runs`;
    const target = scenario.target?.text ?? "—";
    const cells = reference
      ? [
        formatMetrics(scenario, ours),
        formatMetrics(scenario, ref),
        ratio(scenario, ours, ref),
      ]
      : [formatMetrics(scenario, ours)];
    const holds = quick ? "— (quick sizes)" : verdict(scenario, all, ours, ref);
    return `| ${scenario.id} | ${name} | ${cells.join(" | ")} | ${target} | ${holds} |`;
  });
  return [header, rule, ...rows].join("\n");
}

function allMedians(
  scenario: Scenario,
  runs: Record<string, RunResult[]>,
): Record<string, Metrics> {
  return Object.fromEntries(
    Object.entries(runs).map(([name, results]) => [name, medians(results, scenario.metrics)]),
  );
}

/**
 * For each scenario that ran on more servers than `primary` and `reference` (scenario 4 and its
 * transport floors), a heading and a table with one row per server and `primary / server` of
 * the first figure.
 */
export function renderDetails(
  reports: readonly ScenarioReport[],
  servers: { primary: string; reference?: string },
): string[] {
  const { primary, reference } = servers;
  const sections: string[] = [];
  for (const { scenario, runs } of reports) {
    const names = Object.keys(runs);
    if (names.every((name) => name === primary || name === reference)) continue;
    const all = allMedians(scenario, runs);
    const ours = all[primary];
    const rows = names.map((name) =>
      `| ${name} | ${formatMetrics(scenario, all[name])} | ${ratio(scenario, ours, all[name])} |`
    );
    sections.push(
      [
        `Scenario ${scenario.id} by server (median of ${runs[primary]?.length ?? 0} runs each):`,
        "",
        `| Server | Figures | ${primary}/server (1st figure) |`,
        "|---|---|---|",
        ...rows,
      ].join("\n"),
    );
  }
  return sections;
}

/** Notes from every run, deduplicated, as Markdown bullets. */
export function renderNotes(reports: readonly ScenarioReport[]): string[] {
  const lines: string[] = [];
  for (const { scenario, runs } of reports) {
    for (const [server, results] of Object.entries(runs)) {
      const notes = new Set(results.flatMap((result) => result.notes));
      for (const note of notes) lines.push(`- scenario ${scenario.id}, ${server}: ${note}`);
    }
  }
  return lines;
}
