/**
 * The one llama.cpp runtime of the process, created on first use (the first model load), with a GPU when one is
 * usable. node-llama-cpp defaults to max(4, cores) threads, which oversubscribes small machines many times over; Kiln
 * caps it at the cores this process may actually use.
 *
 * `gpu: auto` (the default) lets node-llama-cpp pick the best build whose libraries are installed — CUDA (an NVIDIA
 * driver and a CUDA runtime found), then Vulkan (a Vulkan loader found), then the CPU; Metal on Apple silicon. On a
 * machine without either, the detection is a few file lookups (tens of milliseconds; docs/architecture.md, "GPU").
 * A GPU build that cannot load (missing libraries, an unsupported card) or that finds no device falls back to the CPU
 * build. One log line says which backend was chosen and why.
 */
import { availableParallelism, platform } from 'node:os';
import { getLlama, getLlamaGpuTypes, LlamaLogLevel, NoBinaryFoundError, type Llama, type LlamaGpuType } from 'node-llama-cpp';
import { SILENT_LOG, type Log } from '../../core/log.js';

/** `server.gpu` in the config (config.ts GPU_MODES lists the same values for validation). */
export type GpuSetting = 'auto' | 'cuda' | 'vulkan' | 'metal' | 'off';

/** Which backend the runtime uses, and why: logged once, at the first load. */
export interface RuntimeBackend {
  /** `cpu`, `cuda`, `vulkan` or `metal`. */
  backend: string;
  reason: string;
  /** The GPU devices llama.cpp sees (empty on the CPU). */
  devices: string[];
  /** What node-llama-cpp found installed, best first (`cpu` always last). */
  detected: string[];
}

let runtime: Promise<Llama> | undefined;
let chosen: RuntimeBackend | undefined;
let gpuSetting: GpuSetting = 'auto';
let runtimeLog: Log = SILENT_LOG;

export function usableCores(): number {
  return Math.max(1, availableParallelism());
}

/**
 * Sets how the runtime is created (the server's `gpu` setting, where the choice is logged). The runtime is created
 * once per process: a call after it exists changes nothing and says so.
 */
export function configureRuntime(options: { gpu?: GpuSetting; log?: Log }): void {
  if (options.log !== undefined) runtimeLog = options.log;
  const gpu = options.gpu ?? 'auto';
  if (runtime !== undefined && gpu !== gpuSetting) {
    runtimeLog.warn({ gpu, inUse: chosen?.backend ?? gpuSetting }, 'the llama.cpp runtime already exists: the gpu setting applies from the next start');
    return;
  }
  gpuSetting = gpu;
}

/** The backend chosen, once the runtime exists. */
export function runtimeBackend(): RuntimeBackend | undefined {
  return chosen;
}

export function getRuntime(): Promise<Llama> {
  runtime ??= createRuntime(gpuSetting, runtimeLog).catch((error: unknown) => {
    runtime = undefined;
    throw error;
  });
  return runtime;
}

function loadLlama(gpu: LlamaGpuType | 'auto'): Promise<Llama> {
  return getLlama({
    gpu,
    build: 'never',
    maxThreads: usableCores(),
    logLevel: LlamaLogLevel.error,
    progressLogs: false,
  });
}

const NAMES: Record<string, string> = { cuda: 'CUDA', vulkan: 'Vulkan', metal: 'Metal' };

function backendName(gpu: LlamaGpuType): string {
  return gpu === false ? 'cpu' : gpu;
}

function describeDetected(detected: LlamaGpuType[]): string {
  const gpus = detected.filter((gpu) => gpu !== false);
  return gpus.length === 0 ? 'none' : gpus.map((gpu) => NAMES[gpu as string] ?? String(gpu)).join(', ');
}

/** Why a build did not load; node-llama-cpp's NoBinaryFoundError says nothing but its name. */
function loadFailure(error: unknown, wanted: LlamaGpuType | 'auto', detected: LlamaGpuType[]): string {
  if (!(error instanceof NoBinaryFoundError)) return error instanceof Error ? error.message : String(error);
  if (wanted !== 'auto' && !detected.includes(wanted)) {
    return wanted === 'cuda' ? 'no NVIDIA driver with a CUDA runtime found' : `no ${NAMES[String(wanted)] ?? String(wanted)} driver found`;
  }
  return 'its prebuilt binary failed its test load: a driver or library it needs is missing or too old';
}

async function createRuntime(setting: GpuSetting, log: Log): Promise<Llama> {
  const began = performance.now();
  let llama: Llama;
  let reason: string;
  // What is installed: a few file lookups, cached by node-llama-cpp for its own `auto`.
  const detected = setting === 'off' ? [false as const] : await getLlamaGpuTypes('supported').catch((): LlamaGpuType[] => [false]);
  if (setting === 'off') {
    llama = await loadLlama(false);
    reason = 'server.gpu is off';
  } else {
    const valid = await getLlamaGpuTypes('allValid');
    const wanted: LlamaGpuType | 'auto' = setting === 'auto' ? 'auto' : setting;
    let failure: string | undefined;
    let gpuLlama: Llama | undefined;
    if (wanted !== 'auto' && !valid.includes(wanted)) {
      failure = `${NAMES[setting]} is not available on ${platform()}-${process.arch}`;
    } else {
      try {
        gpuLlama = await loadLlama(wanted);
      } catch (error) {
        failure = `the ${wanted === 'auto' ? 'GPU' : NAMES[setting]} build of llama.cpp could not load (${loadFailure(error, wanted, detected)})`;
      }
    }
    if (gpuLlama !== undefined && gpuLlama.gpu !== false && (await gpuLlama.getGpuDeviceNames()).length === 0) {
      // A GPU build with no device is the CPU build with extra overhead (and Vulkan serialises contexts' decodes).
      failure = `the ${NAMES[gpuLlama.gpu] ?? gpuLlama.gpu} build found no GPU device`;
      await gpuLlama.dispose();
      gpuLlama = undefined;
    }
    if (gpuLlama !== undefined) {
      llama = gpuLlama;
      if (llama.gpu !== false) {
        reason = setting === 'auto' ? `${NAMES[llama.gpu] ?? llama.gpu} found (detected: ${describeDetected(detected)})` : `server.gpu is ${setting}`;
      } else {
        const gpus = detected.filter((gpu) => gpu !== false);
        reason =
          gpus.length === 0
            ? 'no CUDA or Vulkan device found (no NVIDIA driver with a CUDA runtime, no Vulkan loader)'
            : `the ${describeDetected(detected)} build could not load; using the CPU`;
      }
    } else {
      log.warn({ gpu: setting, reason: failure }, 'GPU unavailable: falling back to the CPU build of llama.cpp');
      llama = await loadLlama(false);
      reason = failure ?? 'the GPU build could not load';
    }
  }
  const devices = llama.gpu === false ? [] : await llama.getGpuDeviceNames();
  chosen = { backend: backendName(llama.gpu), reason, devices, detected: detected.map(backendName) };
  log.info({ ...chosen, gpuSetting: setting, ms: Math.round(performance.now() - began) }, 'llama.cpp backend');
  return llama;
}
