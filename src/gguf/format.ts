/** GGUF v3 constants (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md). */

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian u32
export const GGUF_VERSION = 3;
export const DEFAULT_ALIGNMENT = 32;

export enum ValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

export enum TensorType {
  F32 = 0,
  F16 = 1,
  Q8_0 = 8,
}

/** Bytes of one block and values per block, per tensor type. */
export const TENSOR_LAYOUT: Record<TensorType, { blockBytes: number; blockValues: number }> = {
  [TensorType.F32]: { blockBytes: 4, blockValues: 1 },
  [TensorType.F16]: { blockBytes: 2, blockValues: 1 },
  [TensorType.Q8_0]: { blockBytes: 34, blockValues: 32 },
};

/** llama.cpp token types (tokenizer.ggml.token_type). */
export enum TokenType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

/** A metadata value with its GGUF type; arrays carry their element type. */
export type MetadataValue =
  | { type: ValueType.STRING; value: string }
  | { type: ValueType.BOOL; value: boolean }
  | { type: ValueType.UINT8 | ValueType.INT8 | ValueType.UINT16 | ValueType.INT16 | ValueType.UINT32 | ValueType.INT32 | ValueType.FLOAT32 | ValueType.FLOAT64; value: number }
  | { type: ValueType.UINT64 | ValueType.INT64; value: bigint }
  | { type: ValueType.ARRAY; itemType: ValueType; value: Array<string | number | bigint | boolean> };

export interface TensorInfo {
  name: string;
  /** ggml order: dims[0] is the row length (ne0). */
  dims: number[];
  type: TensorType;
  /** Offset from the start of the data section. */
  offset: bigint;
}

export function tensorByteLength(dims: readonly number[], type: TensorType): number {
  const { blockBytes, blockValues } = TENSOR_LAYOUT[type];
  if (dims[0]! % blockValues !== 0) throw new Error(`row length ${dims[0]} is not a multiple of ${blockValues} for type ${TensorType[type]}`);
  const values = dims.reduce((product, dim) => product * dim, 1);
  return (values / blockValues) * blockBytes;
}
