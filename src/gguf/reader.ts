/**
 * Reads a GGUF file's metadata and tensor infos (not the tensor data): enough to copy a real tokenizer from a
 * vocabulary-only GGUF, or to check what the writer wrote.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DEFAULT_ALIGNMENT, GGUF_MAGIC, ValueType, type MetadataValue, type TensorInfo } from './format.js';

export interface GgufHeader {
  version: number;
  metadata: Map<string, MetadataValue>;
  tensors: TensorInfo[];
  /** `general.alignment`, or 32 when absent. */
  alignment: number;
  /** Absolute file offset of the data section; a tensor's data starts at dataOffset + tensor.offset. */
  dataOffset: bigint;
}

const SCALAR_SIZES: Partial<Record<ValueType, number>> = {
  [ValueType.UINT8]: 1, [ValueType.INT8]: 1, [ValueType.BOOL]: 1, [ValueType.UINT16]: 2, [ValueType.INT16]: 2,
  [ValueType.UINT32]: 4, [ValueType.INT32]: 4, [ValueType.FLOAT32]: 4,
  [ValueType.UINT64]: 8, [ValueType.INT64]: 8, [ValueType.FLOAT64]: 8,
};

/**
 * Sequential little-endian reads over a file, buffered in 1 MB chunks. Reads are synchronous over the buffer; only
 * `ensure` touches the file, and callers skip awaiting it when the bytes are already there (a vocabulary has
 * ~300k strings, and an await each costs more than the parsing).
 */
class FileCursor {
  private buffer = Buffer.alloc(0);
  private at = 0;
  private filePosition = 0;

  constructor(private readonly handle: FileHandle) {}

  /** Bytes consumed from the start of the file. */
  get position(): number {
    return this.filePosition - (this.buffer.length - this.at);
  }

  has(bytes: number): boolean {
    return this.at + bytes <= this.buffer.length;
  }

  async ensure(bytes: number): Promise<void> {
    if (this.has(bytes)) return;
    const chunk = Buffer.alloc(Math.max(bytes, 1 << 20));
    const { bytesRead } = await this.handle.read(chunk, 0, chunk.length, this.filePosition);
    this.filePosition += bytesRead;
    this.buffer = Buffer.concat([this.buffer.subarray(this.at), chunk.subarray(0, bytesRead)]);
    this.at = 0;
    if (this.buffer.length < bytes) throw new Error('unexpected end of GGUF file');
  }

  async u32(): Promise<number> {
    if (!this.has(4)) await this.ensure(4);
    return this.scalar(ValueType.UINT32) as number;
  }

  async u64(): Promise<bigint> {
    if (!this.has(8)) await this.ensure(8);
    return this.scalar(ValueType.UINT64) as bigint;
  }

  async string(): Promise<string> {
    if (!this.has(8)) await this.ensure(8);
    const length = Number(this.scalar(ValueType.UINT64));
    if (!this.has(length)) await this.ensure(length);
    const value = this.buffer.toString('utf8', this.at, this.at + length);
    this.at += length;
    return value;
  }

  async value(type: ValueType): Promise<string | number | bigint | boolean> {
    if (type === ValueType.STRING) return this.string();
    const size = SCALAR_SIZES[type];
    if (size === undefined) throw new Error(`unknown GGUF value type ${type}`);
    if (!this.has(size)) await this.ensure(size);
    return this.scalar(type);
  }

  /** A fixed-size scalar that is already buffered. */
  private scalar(type: ValueType): number | bigint | boolean {
    const b = this.buffer;
    const at = this.at;
    this.at += SCALAR_SIZES[type]!;
    switch (type) {
      case ValueType.UINT8: return b.readUInt8(at);
      case ValueType.INT8: return b.readInt8(at);
      case ValueType.BOOL: return b.readUInt8(at) !== 0;
      case ValueType.UINT16: return b.readUInt16LE(at);
      case ValueType.INT16: return b.readInt16LE(at);
      case ValueType.UINT32: return b.readUInt32LE(at);
      case ValueType.INT32: return b.readInt32LE(at);
      case ValueType.FLOAT32: return b.readFloatLE(at);
      case ValueType.UINT64: return b.readBigUInt64LE(at);
      case ValueType.INT64: return b.readBigInt64LE(at);
      case ValueType.FLOAT64: return b.readDoubleLE(at);
      default: throw new Error(`not a fixed-size GGUF type: ${type}`);
    }
  }
}

export async function readGgufHeader(filePath: string): Promise<GgufHeader> {
  const handle = await open(filePath, 'r');
  try {
    const cursor = new FileCursor(handle);
    if ((await cursor.u32()) !== GGUF_MAGIC) throw new Error(`${filePath} is not a GGUF file`);
    const version = await cursor.u32();
    if (version < 2 || version > 3) throw new Error(`${filePath}: GGUF version ${version} is not supported`);
    const tensorCount = Number(await cursor.u64());
    const entryCount = Number(await cursor.u64());
    const metadata = new Map<string, MetadataValue>();
    for (let i = 0; i < entryCount; i++) {
      const key = await cursor.string();
      const type = (await cursor.u32()) as ValueType;
      if (type === ValueType.ARRAY) {
        const itemType = (await cursor.u32()) as ValueType;
        if (itemType === ValueType.ARRAY) throw new Error(`${filePath}: nested arrays (${key}) are not supported`);
        const length = Number(await cursor.u64());
        const value: Array<string | number | bigint | boolean> = new Array(length);
        for (let j = 0; j < length; j++) value[j] = await cursor.value(itemType);
        metadata.set(key, { type, itemType, value });
      } else {
        metadata.set(key, { type, value: await cursor.value(type) } as MetadataValue);
      }
    }
    const tensors: TensorInfo[] = [];
    for (let i = 0; i < tensorCount; i++) {
      const name = await cursor.string();
      const dimensionCount = await cursor.u32();
      const dims: number[] = [];
      for (let d = 0; d < dimensionCount; d++) dims.push(Number(await cursor.u64()));
      tensors.push({ name, dims, type: await cursor.u32(), offset: await cursor.u64() });
    }
    const alignmentEntry = metadata.get('general.alignment');
    const alignment = typeof alignmentEntry?.value === 'number' ? alignmentEntry.value : DEFAULT_ALIGNMENT;
    const dataOffset = BigInt(Math.ceil(cursor.position / alignment) * alignment);
    return { version, metadata, tensors, alignment, dataOffset };
  } finally {
    await handle.close();
  }
}

/** A metadata value by key, checked for a JS type: `metadataValue(header, 'general.name', 'string')`. */
export function metadataValue<T extends 'string' | 'number' | 'boolean' | 'bigint'>(
  header: GgufHeader,
  key: string,
  kind: T,
): (T extends 'string' ? string : T extends 'number' ? number : T extends 'boolean' ? boolean : bigint) | undefined {
  const entry = header.metadata.get(key);
  if (entry === undefined) return undefined;
  if (typeof entry.value !== kind) throw new Error(`GGUF key ${key} is not a ${kind}`);
  return entry.value as never;
}
