/**
 * Random weights, deterministic from a seed, encoded as F32 or Q8_0 row by row.
 */
import { TensorType } from './format.js';
import type { TensorSource } from './writer.js';

/** xorshift32 seeded from a string and a number: every tensor gets its own reproducible stream. */
export function seededRandom(seed: number, salt: string): () => number {
  let state = (seed * 2654435761) >>> 0;
  for (let i = 0; i < salt.length; i++) state = (Math.imul(state ^ salt.charCodeAt(i), 16777619) + 0x9e3779b9) >>> 0;
  if (state === 0) state = 0x6d2b79f5;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
}

/** Fills one row (`row` counts along dims[1]) of a tensor's values. */
export type RowFiller = (row: number, values: Float32Array) => void;

/** Uniform values with the given standard deviation. */
export function randomRows(seed: number, name: string, std: number): RowFiller {
  const random = seededRandom(seed, name);
  const scale = std * Math.sqrt(12);
  return (_row, values) => {
    for (let i = 0; i < values.length; i++) values[i] = (random() - 0.5) * scale;
  };
}

export const constantRows = (value: number): RowFiller => (_row, values) => values.fill(value);

/** IEEE half from a float (round to nearest even; no NaN handling needed for weights). */
function toHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  let mantissa = bits & 0x7fffff;
  if (exponent <= 0) {
    if (exponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - exponent;
    const half = mantissa >>> shift;
    const rounded = half + ((mantissa >>> (shift - 1)) & 1);
    return sign | rounded;
  }
  if (exponent >= 31) return sign | 0x7c00;
  const rounded = (exponent << 10) | (mantissa >>> 13);
  const roundBit = (mantissa >>> 12) & 1;
  return sign | (rounded + roundBit);
}

const ROWS_PER_CHUNK_BYTES = 1 << 20;

export function tensor(name: string, dims: number[], type: TensorType, fill: RowFiller): TensorSource {
  const rowLength = dims[0]!;
  const rows = dims.slice(1).reduce((product, dim) => product * dim, 1);
  return {
    name,
    dims,
    type,
    *data() {
      const values = new Float32Array(rowLength);
      const rowBytes = type === TensorType.Q8_0 ? (rowLength / 32) * 34 : rowLength * (type === TensorType.F16 ? 2 : 4);
      const rowsPerChunk = Math.max(1, Math.floor(ROWS_PER_CHUNK_BYTES / rowBytes));
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
    for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i]!, at + i * 4);
    return;
  }
  if (type === TensorType.F16) {
    for (let i = 0; i < values.length; i++) out.writeUInt16LE(toHalf(values[i]!), at + i * 2);
    return;
  }
  // Q8_0: per block of 32, a half scale d = max|x| / 127 and 32 int8 values x / d.
  const quants = new Int8Array(out.buffer, out.byteOffset, out.length);
  for (let block = 0; block < values.length / 32; block++) {
    let max = 0;
    for (let i = 0; i < 32; i++) max = Math.max(max, Math.abs(values[block * 32 + i]!));
    const scale = max / 127;
    const inverse = scale === 0 ? 0 : 1 / scale;
    const base = at + block * 34;
    out.writeUInt16LE(toHalf(scale), base);
    for (let i = 0; i < 32; i++) quants[base + 2 + i] = Math.round(values[block * 32 + i]! * inverse);
  }
}

/**
 * The constant-dimension trick both generated model kinds use: residual dimension `dimension` is held at 1 (the
 * embedding sets it, no layer writes to it), so the output layer's weight there acts as a per-token logit bias.
 */
export const constantDimension = (dimension: number) => ({
  /** Sets `values[dimension]` of each row (embedding: 1; output: the token's bias). */
  set: (fill: RowFiller, valueFor: (row: number) => number): RowFiller => (row, values) => {
    fill(row, values);
    values[dimension] = valueFor(row);
  },
  /** Zeroes the output row for `dimension` (attn_output, ffn_down): layers never write to it. */
  keep: (fill: RowFiller): RowFiller => (row, values) => {
    fill(row, values);
    if (row === dimension) values.fill(0);
  },
});
