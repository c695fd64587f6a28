/**
 * The one llama.cpp runtime of the process. node-llama-cpp defaults to max(4, cores) threads, which oversubscribes
 * small machines many times over; Kiln caps it at the cores this process may actually use.
 */
import { availableParallelism } from 'node:os';
import { getLlama, LlamaLogLevel, type Llama } from 'node-llama-cpp';

let runtime: Promise<Llama> | undefined;

export function usableCores(): number {
  return Math.max(1, availableParallelism());
}

export function getRuntime(): Promise<Llama> {
  runtime ??= getLlama({
    gpu: false,
    build: 'never',
    maxThreads: usableCores(),
    logLevel: LlamaLogLevel.error,
    progressLogs: false,
  });
  return runtime;
}
