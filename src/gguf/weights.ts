/**
 * Random weights, deterministic from a seed, encoded as F32, F16 or Q8_0 row by row. Hot path for the ~500M-value
 * benchmark models, hence the typed-array views and the inlined PRNG.
 */
import { endianness } from 'node:os';
import { TensorType, tensorByteLength } from './format.js';
import type { TensorSource } from './writer.js';

if (endianness() !== 'LE') throw new Error('the GGUF writer assumes a little-endian machine');

/** xorshift32 state seeded from a number and a string: every tensor gets its own reproducible stream. */
function seedState(seed: number, salt: string): number {
  let state = (seed * 2654435761) >>> 0;
  for (let i = 0; i < salt.length; i++) state = (Math.imul(state ^ salt.charCodeAt(i), 16777619) + 0x9e3779b9) >>> 0;
  return state === 0 ? 0x6d2b79f5 : state;
}

/** Uniform [0, 1) numbers from a seeded xorshift32. */
export function seededRandom(seed: number, salt: string): () => number {
  let state = seedState(seed, salt);
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
}

/** Fills one row (`row` counts along dims[1] and beyond) of a tensor's values. */
export type RowFiller = (row: number, values: Float32Array) => void;

/** Uniform values with the given standard deviation (the same stream as `seededRandom`, inlined for speed). */
export function randomRows(seed: number, name: string, std: number): RowFiller {
  let state = seedState(seed, name);
  const scale = std * Math.sqrt(12);
  return (_row, values) => {
    let s = state;
    for (let i = 0; i < values.length; i++) {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      values[i] = (s / 4294967296 - 0.5) * scale;
    }
    state = s;
  };
}

export const constantRows = (value: number): RowFiller => (_row, values) => values.fill(value);

const halfScratch = new Float32Array(1);
const halfBits = new Uint32Array(halfScratch.buffer);

/** IEEE half from a float (round half up; weights are finite, so no NaN handling). */
export function toHalf(value: number): number {
  halfScratch[0] = value;
  const bits = halfBits[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  let mantissa = bits & 0x7fffff;
  if (exponent <= 0) {
    if (exponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - exponent;
    return sign | ((mantissa >>> shift) + ((mantissa >>> (shift - 1)) & 1));
  }
  if (exponent >= 31) return sign | 0x7c00;
  // A carry out of the mantissa correctly bumps the exponent (and saturates to infinity).
  return sign | (((exponent << 10) | (mantissa >>> 13)) + ((mantissa >>> 12) & 1));
}

const CHUNK_BYTES = 1 << 20;

/** A tensor whose rows are produced by `fill` and encoded as `type`, yielded in ~1 MB chunks. */
export function tensor(name: string, dims: number[], type: TensorType, fill: RowFiller): TensorSource {
  const rowLength = dims[0]!;
  const rows = dims.slice(1).reduce((product, dim) => product * dim, 1);
  const rowBytes = tensorByteLength([rowLength], type);
  return {
    name,
    dims,
    type,
    *data() {
      const values = new Float32Array(rowLength);
      const rowsPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes));
      for (let first = 0; first < rows; first += rowsPerChunk) {
        const count = Math.min(rowsPerChunk, rows - first);
        const chunk = Buffer.alloc(count * rowBytes);
        for (let r = 0; r < count; r++) {
          fill(first + r, values);
          encodeRow(values, type, chunk, r * rowBytes);
        }
        yield chunk;
      }
    },
  };
}

function encodeRow(values: Float32Array, type: TensorType, out: Buffer, at: number): void {
  if (type === TensorType.F32) {
    out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), at);
    return;
  }
  if (type === TensorType.F16) {
    for (let i = 0; i < values.length; i++) out.writeUInt16LE(toHalf(values[i]!), at + i * 2);
    return;
  }
  // Q8_0: per block of 32 values, an f16 scale d = max|x| / 127, then 32 int8 values round(x / d).
  const quants = new Int8Array(out.buffer, out.byteOffset, out.length);
  for (let block = 0; block < values.length / 32; block++) {
    const first = block * 32;
    let max = 0;
    for (let i = 0; i < 32; i++) {
      const magnitude = Math.abs(values[first + i]!);
      if (magnitude > max) max = magnitude;
    }
    const scale = max / 127;
    const inverse = scale === 0 ? 0 : 1 / scale;
    const base = at + block * 34;
    out.writeUInt16LE(toHalf(scale), base);
    for (let i = 0; i < 32; i++) quants[base + 2 + i] = Math.round(values[first + i]! * inverse);
  }
}
