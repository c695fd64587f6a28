/**
 * The table `npm run bench:auth` prints (markdown, pasted as is into docs/benchmark.md). Each figure is the median of
 * the rounds (lowest–highest round); each comparison with `off` is made round by round — the two measurements of a
 * round are seconds apart, while rounds drift on a shared machine — and reported as the median of those per-round
 * differences (or ratios), with their spread, then the same computed from the medians.
 */
import { median } from './gateway-client.js';

export type Phase = 1 | 8;

/** One server at one concurrency: one entry per round. */
export interface Cell {
  p50: number[];
  p99: number[];
  rps: number[];
  /** CPU µs of the Kiln process per request. */
  cpu: number[];
  errors: number;
  requests: number;
}

export interface Report {
  title: string;
  notes: string;
  setup: string;
  /** `off` first: every other server is compared with it. */
  names: string[];
  cells: Map<string, Cell>;
  phases: Phase[];
}

/** Issue 12's targets. */
export const ADDED_P50_TARGET_MS = 0.2;
export const RPS_RATIO_TARGET = 0.95;

type Figure = 'p50' | 'p99' | 'rps' | 'cpu';
const LABELS: Record<Figure, string> = { p50: 'p50 latency, ms', p99: 'p99 latency, ms', rps: 'requests/s', cpu: 'Kiln CPU per request, µs' };
/** Latency first where one client measures it, throughput first where eight do. */
const ORDER: Record<Phase, Figure[]> = { 1: ['p50', 'p99', 'rps', 'cpu'], 8: ['rps', 'p50', 'p99', 'cpu'] };

const fmtMs = (ms: number) => (Number.isNaN(ms) ? '—' : Math.abs(ms) >= 100 ? ms.toFixed(0) : Math.abs(ms) >= 10 ? ms.toFixed(1) : ms.toFixed(3));
const fmtSigned = (ms: number) => `${ms >= 0 ? '+' : '−'}${fmtMs(Math.abs(ms))}`;
const fmtInt = (value: number) => (Number.isNaN(value) ? '—' : value.toFixed(0));
const fmtSignedInt = (value: number) => `${value >= 0 ? '+' : '−'}${fmtInt(Math.abs(value))}`;
const fmtRatio = (value: number) => value.toFixed(3);
const spread = (values: number[], fmt: (value: number) => string) => (values.length < 2 ? fmt(values[0] ?? Number.NaN) : `${fmt(median(values))} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})`);

function compare(figure: Figure, base: number[], other: number[]): { cell: string; value: number } {
  if (figure === 'rps') {
    const ratios = other.map((value, round) => value / base[round]!);
    return { cell: `×${spread(ratios, fmtRatio)}; of medians ×${fmtRatio(median(other) / median(base))}`, value: median(ratios) };
  }
  const fmt = figure === 'cpu' ? fmtSignedInt : fmtSigned;
  const differences = other.map((value, round) => value - base[round]!);
  return { cell: `${spread(differences, fmt)}; of medians ${fmt(median(other) - median(base))}`, value: median(differences) };
}

function target(figure: Figure, phase: Phase): { text: string; met: (value: number) => boolean } | undefined {
  if (phase === 1 && figure === 'p50') return { text: `< +${ADDED_P50_TARGET_MS} ms`, met: (value) => value < ADDED_P50_TARGET_MS };
  if (phase === 8 && figure === 'rps') return { text: `≥ ×${RPS_RATIO_TARGET} (< 5% fewer)`, met: (value) => value >= RPS_RATIO_TARGET };
  return undefined;
}

export function renderReport(report: Report): string {
  const [base, ...others] = report.names;
  const of = (name: string, phase: Phase) => report.cells.get(`${name}|${phase}`)!;
  const lines = [
    report.title,
    '',
    `Machine: ${report.notes}. Setup: ${report.setup}.`,
    '',
    `Median of the rounds (lowest–highest round). "vs ${base}": per round, the difference (ratio for requests/s) with ${base}'s figure of the same round; median of the rounds (spread); then the same from the medians.`,
    '',
    `| clients | figure | ${report.names.join(' | ')} | ${others.map((name) => `${name} vs ${base}`).join(' | ')} | target | ${others.map((name) => `${name} met`).join(' | ')} |`,
    `| ---: | --- | ${report.names.map(() => '---:').join(' | ')} | ${others.map(() => '---:').join(' | ')} | --- | ${others.map(() => '---').join(' | ')} |`,
  ];
  for (const phase of report.phases) {
    for (const figure of ORDER[phase]) {
      const fmt = figure === 'rps' || figure === 'cpu' ? fmtInt : fmtMs;
      const goal = target(figure, phase);
      const comparisons = others.map((name) => compare(figure, of(base!, phase)[figure], of(name, phase)[figure]));
      lines.push(
        `| ${phase} | ${LABELS[figure]} | ${report.names.map((name) => spread(of(name, phase)[figure], fmt)).join(' | ')} | ${comparisons.map((comparison) => comparison.cell).join(' | ')} | ${goal?.text ?? '—'} | ${comparisons.map((comparison) => (goal === undefined ? '' : goal.met(comparison.value) ? 'yes' : '**NO**')).join(' | ')} |`,
      );
    }
  }
  const failures = report.names.map((name) => {
    const cells = report.phases.map((phase) => of(name, phase));
    return `${name} ${cells.reduce((sum, c) => sum + c.errors, 0)} of ${cells.reduce((sum, c) => sum + c.requests, 0)}`;
  });
  lines.push('', `Failed requests (wrong status or body, or a transport error): ${failures.join(', ')}.`);
  return lines.join('\n');
}
