/**
 * Download progress: a bar (bytes, speed, ETA) on a terminal, plain lines elsewhere (every 10% and at least every
 * `intervalMs`), so logs and CI output stay readable.
 */
import cliProgress from 'cli-progress';

export interface ProgressReporter {
  /** A download (re)starts: `offset` bytes are already on disk (a resumed partial). */
  start(info: { label: string; total: number | undefined; offset: number }): void;
  /** Bytes received since the last call. */
  advance(bytes: number): void;
  /** A one-line message between bars (resume, restart, verify). */
  note(message: string): void;
  /** The transfer ended (done or failed). */
  stop(): void;
}

export const silentProgress: ProgressReporter = { start() {}, advance() {}, note() {}, stop() {} };

export function formatBytes(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = bytes / 1000;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const whole = Math.max(0, Math.round(seconds));
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, '0')}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, '0')}m`;
}

interface Counters {
  total: number | undefined;
  offset: number;
  received: number;
  began: number;
}

function stats(counters: Counters, now: number) {
  const done = counters.offset + counters.received;
  const seconds = Math.max((now - counters.began) / 1000, 1e-3);
  const speed = counters.received / seconds;
  const eta = counters.total !== undefined && speed > 0 ? (counters.total - done) / speed : Number.NaN;
  const percent = counters.total !== undefined && counters.total > 0 ? Math.floor((done / counters.total) * 100) : undefined;
  return { done, speed, eta, percent };
}

function line(label: string, counters: Counters, now: number): string {
  const { done, speed, eta, percent } = stats(counters, now);
  const of = counters.total !== undefined ? ` / ${formatBytes(counters.total)} (${percent}%)` : '';
  return `${label}: ${formatBytes(done)}${of}, ${formatBytes(speed)}/s, ETA ${formatDuration(eta)}`;
}

/** Plain lines for logs and pipes. */
export function lineProgress(write: (text: string) => void, intervalMs = 5000): ProgressReporter {
  let counters: Counters | undefined;
  let label = '';
  let lastLine = 0;
  let lastPercent = -1;
  return {
    start(info) {
      label = info.label;
      counters = { total: info.total, offset: info.offset, received: 0, began: performance.now() };
      lastLine = counters.began;
      lastPercent = counters.total !== undefined ? Math.floor((info.offset / Math.max(counters.total, 1)) * 10) : -1;
      const from = info.offset > 0 ? ` from ${formatBytes(info.offset)}` : '';
      write(`${label}: downloading${counters.total !== undefined ? ` ${formatBytes(counters.total)}` : ''}${from}\n`);
    },
    advance(bytes) {
      if (counters === undefined) return;
      counters.received += bytes;
      const now = performance.now();
      const tenth = counters.total !== undefined && counters.total > 0 ? Math.floor(((counters.offset + counters.received) / counters.total) * 10) : -1;
      if (tenth > lastPercent || now - lastLine >= intervalMs) {
        lastPercent = Math.max(lastPercent, tenth);
        lastLine = now;
        write(`${line(label, counters, now)}\n`);
      }
    },
    note(message) {
      write(`${message}\n`);
    },
    stop() {
      counters = undefined;
    },
  };
}

/** A cli-progress bar on a terminal stream. */
export function barProgress(stream: NodeJS.WritableStream): ProgressReporter {
  let bar: cliProgress.SingleBar | undefined;
  let counters: Counters | undefined;
  let lastRender = 0;
  const payload = (now: number) => {
    const { done, speed, eta } = stats(counters!, now);
    return { done_h: formatBytes(done), total_h: counters!.total !== undefined ? formatBytes(counters!.total) : '?', speed_h: `${formatBytes(speed)}/s`, eta_h: formatDuration(eta) };
  };
  const stop = () => {
    bar?.stop();
    bar = undefined;
  };
  return {
    start(info) {
      stop();
      counters = { total: info.total, offset: info.offset, received: 0, began: performance.now() };
      bar = new cliProgress.SingleBar(
        {
          format: `${info.label} {bar} {percentage}% | {done_h} / {total_h} | {speed_h} | ETA {eta_h}`,
          stream: stream as NodeJS.WritableStream & { isTTY?: boolean },
          hideCursor: true,
          fps: 10,
          barsize: 30,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(info.total ?? 0, info.offset, payload(counters.began));
    },
    advance(bytes) {
      if (bar === undefined || counters === undefined) return;
      counters.received += bytes;
      const now = performance.now();
      if (now - lastRender < 100 && (counters.total === undefined || counters.offset + counters.received < counters.total)) return;
      lastRender = now;
      bar.update(counters.offset + counters.received, payload(now));
    },
    note(message) {
      if (bar !== undefined) {
        stop();
        stream.write(`${message}\n`);
      } else stream.write(`${message}\n`);
    },
    stop,
  };
}

/** A bar when `stream` is a terminal, lines otherwise. */
export function progressFor(stream: NodeJS.WriteStream, intervalMs?: number): ProgressReporter {
  return stream.isTTY ? barProgress(stream) : lineProgress((text) => stream.write(text), intervalMs);
}
