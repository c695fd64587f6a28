/**
 * A local model's file before it loads: present, being downloaded (`auto_pull`), or missing. A request for a model
 * whose file is not there gets 503 with `Retry-After` and a message that says what is happening — how far a download
 * has got, or how to get the file — never a load attempt on a file that is not there.
 */
import { access } from 'node:fs/promises';
import type { Log } from '../core/log.js';
import { KilnError } from '../errors/catalog.js';
import type { ProgressReporter } from '../models/progress.js';
import { formatBytes } from '../models/progress.js';
import { pullModel } from '../models/pull.js';

export interface ModelFileSettings {
  /** The model id, as clients and logs name it. */
  modelId: string;
  path: string;
  /** Where it can be pulled from (`hf:…` or a URL). */
  source?: string;
  /** Start the download on the first request instead of waiting for `kiln pull`. */
  autoPull: boolean;
  modelsDir: string;
  log: Log;
}

/** How long a client is told to wait while a download runs. */
const DOWNLOAD_RETRY_SECONDS = 10;

export class ModelFile {
  private present = false;
  private download: { done: number; total: number | undefined; failed?: string } | undefined;

  constructor(private readonly settings: ModelFileSettings) {}

  /** Resolves when the file is there; otherwise throws the 503 that says why not (starting a download if allowed). */
  async ensurePresent(): Promise<void> {
    if (this.present) return;
    if (await exists(this.settings.path)) {
      this.present = true;
      return;
    }
    const { modelId, source, autoPull } = this.settings;
    if (source === undefined || !autoPull) {
      const how = source === undefined ? 'place its file on the server' : `run \`kiln pull ${modelId}\` on the server, or set auto_pull: true`;
      throw new KilnError('modelUnavailable', { message: `Model '${modelId}' is not downloaded yet: ${how}.`, retryAfterSeconds: 60 });
    }
    if (this.download === undefined || this.download.failed !== undefined) this.startDownload(source);
    throw this.downloadingError();
  }

  private startDownload(source: string): void {
    const state: NonNullable<ModelFile['download']> = { done: 0, total: undefined };
    this.download = state;
    const progress: ProgressReporter = {
      start: ({ total, offset }) => {
        state.total = total;
        state.done = offset;
      },
      advance: (bytes) => {
        state.done += bytes;
      },
      note: () => {},
      stop: () => {},
    };
    const { modelId, path, modelsDir, log } = this.settings;
    log.info({ model: modelId }, 'model download started (auto_pull)');
    pullModel(source, { modelsDir, dest: path, progress }).then(
      (result) => {
        this.download = undefined;
        log.info({ model: modelId, bytes: result.bytesReceived, seconds: Number(result.seconds.toFixed(1)), verified: result.verified }, 'model downloaded');
      },
      (error: unknown) => {
        state.failed = error instanceof Error ? error.message : String(error);
        log.error({ model: modelId, reason: state.failed }, 'model download failed');
      },
    );
  }

  private downloadingError(): KilnError {
    const { done, total, failed } = this.download!;
    const { modelId } = this.settings;
    if (failed !== undefined) {
      // The reason (hub addresses, the server's paths) is for the operator's log, not for clients.
      return new KilnError('modelUnavailable', {
        message: `Model '${modelId}' could not be downloaded (the server's log says why); the next request tries again.`,
        retryAfterSeconds: DOWNLOAD_RETRY_SECONDS,
      });
    }
    const far =
      total !== undefined && total > 0 ? `${Math.floor((done / total) * 100)}% of ${formatBytes(total)}` : done > 0 ? `${formatBytes(done)} so far` : 'starting';
    return new KilnError('modelUnavailable', {
      message: `Model '${modelId}' is downloading (${far}). Please retry in ${DOWNLOAD_RETRY_SECONDS} s.`,
      retryAfterSeconds: DOWNLOAD_RETRY_SECONDS,
    });
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
