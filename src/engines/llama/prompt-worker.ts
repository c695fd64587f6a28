/**
 * Tokenizes large prompt texts on a worker thread, so that a prompt of a megabyte (≈ 0.25 s of llama.cpp tokenizing on
 * the 2-core dev VM) does not stall every other request's event loop. The worker loads only the GGUF's vocabulary
 * (no weights) into its own llama.cpp runtime; the same vocabulary gives the same tokens. It starts on first use.
 */
import { Worker } from 'node:worker_threads';

/** Plain JavaScript, evaluated as the worker's script: no build step or TypeScript loader needed there. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { getLlama, LlamaLogLevel } = await import(workerData.module);
  const llama = await getLlama({ gpu: false, build: 'never', maxThreads: 1, logLevel: LlamaLogLevel.error, progressLogs: false });
  const model = await llama.loadModel({ modelPath: workerData.file, vocabOnly: true });
  parentPort.on('message', ({ id, texts }) => {
    try {
      const tokens = texts.map((text) => Uint32Array.from(model.tokenize(text, false)));
      parentPort.postMessage({ id, tokens }, tokens.map((array) => array.buffer));
    } catch (error) {
      parentPort.postMessage({ id, error: String(error) });
    }
  });
  parentPort.postMessage({ ready: true });
})().catch((error) => parentPort.postMessage({ failed: String(error) }));
`;

interface Reply {
  id?: number;
  tokens?: Uint32Array[];
  error?: string;
  ready?: boolean;
  failed?: string;
}

export class TokenizerWorker {
  private worker: Worker | undefined;
  private ready: Promise<void> | undefined;
  private readonly pending = new Map<number, { resolve: (tokens: Uint32Array[]) => void; reject: (error: Error) => void }>();
  private nextId = 0;

  constructor(private readonly modelFile: string) {}

  /** Each text tokenized without parse_special, as `model.tokenize(text, false)` would (token ids). */
  async tokenize(texts: string[]): Promise<Uint32Array[]> {
    await this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker!.postMessage({ id, texts });
    });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    if (worker !== undefined) await worker.terminate();
  }

  private start(): Promise<void> {
    this.ready ??= new Promise<void>((resolve, reject) => {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { module: import.meta.resolve('node-llama-cpp'), file: this.modelFile } });
      // The worker never keeps the process alive on its own.
      worker.unref();
      this.worker = worker;
      worker.on('message', (reply: Reply) => {
        if (reply.ready) return resolve();
        if (reply.failed !== undefined) return this.fail(worker, new Error(`tokenizer worker failed to start: ${reply.failed}`), reject);
        const waiting = this.pending.get(reply.id!);
        this.pending.delete(reply.id!);
        if (reply.error !== undefined) waiting?.reject(new Error(reply.error));
        else waiting?.resolve(reply.tokens!);
      });
      worker.on('error', (error) => this.fail(worker, error, reject));
      worker.on('exit', () => this.fail(worker, new Error('tokenizer worker exited'), reject));
    });
    return this.ready;
  }

  /** A broken worker fails what waits on it; the next call starts a fresh one. */
  private fail(worker: Worker, error: Error, reject: (error: Error) => void): void {
    reject(error);
    if (this.worker !== worker) return;
    this.worker = undefined;
    this.ready = undefined;
    for (const waiting of this.pending.values()) waiting.reject(error);
    this.pending.clear();
    void worker.terminate();
  }
}
