/**
 * Reads a GGUF file's metadata and tensor infos (not the tensor data): enough to copy a real tokenizer from a
 * vocabulary-only GGUF, or to check what the writer wrote.
 */
import { open } from 'node:fs/promises';
import { GGUF_MAGIC, ValueType, type MetadataValue, type TensorInfo } from './format.js';

export interface GgufHeader {
  version: number;
  metadata: Map<string, MetadataValue>;
  tensors: TensorInfo[];
}

/** Sequential little-endian reads over a file, fetched in chunks as needed. */
class FileCursor {
  private buffer = Buffer.alloc(0);
  private at = 0;
  private filePosition = 0;

  constructor(private readonly handle: Awaited<ReturnType<typeof open>>) {}

  private async need(bytes: number): Promise<void> {
    if (this.at + bytes <= this.buffer.length) return;
    const chunk = Buffer.alloc(Math.max(bytes, 1 << 20));
    const { bytesRead } = await this.handle.read(chunk, 0, chunk.length, this.filePosition);
    this.filePosition += bytesRead;
    this.buffer = Buffer.concat([this.buffer.subarray(this.at), chunk.subarray(0, bytesRead)]);
    this.at = 0;
    if (this.buffer.length < bytes) throw new Error('unexpected end of GGUF file');
  }

  async u32(): Promise<number> {
    await this.need(4);
    const value = this.buffer.readUInt32LE(this.at);
    this.at += 4;
    return value;
  }

  async u64(): Promise<bigint> {
    await this.need(8);
    const value = this.buffer.readBigUInt64LE(this.at);
    this.at += 8;
    return value;
  }

  async string(): Promise<string> {
    const length = Number(await this.u64());
    await this.need(length);
    const value = this.buffer.toString('utf8', this.at, this.at + length);
    this.at += length;
    return value;
  }

  async scalar(type: ValueType): Promise<string | number | bigint | boolean> {
    const sizes: Partial<Record<ValueType, number>> = {
      [ValueType.UINT8]: 1, [ValueType.INT8]: 1, [ValueType.BOOL]: 1, [ValueType.UINT16]: 2, [ValueType.INT16]: 2,
      [ValueType.UINT32]: 4, [ValueType.INT32]: 4, [ValueType.FLOAT32]: 4, [ValueType.UINT64]: 8, [ValueType.INT64]: 8, [ValueType.FLOAT64]: 8,
    };
    if (type === ValueType.STRING) return this.string();
    const size = sizes[type];
    if (size === undefined) throw new Error(`unknown GGUF value type ${type}`);
    await this.need(size);
    const b = this.buffer;
    const at = this.at;
    this.at += size;
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
      default: return b.readDoubleLE(at);
    }
  }
}

export async function readGgufHeader(filePath: string): Promise<GgufHeader> {
  const handle = await open(filePath, 'r');
  try {
    const cursor = new FileCursor(handle);
    if ((await cursor.u32()) !== GGUF_MAGIC) throw new Error(`${filePath} is not a GGUF file`);
    const version = await cursor.u32();
    if (version < 2) throw new Error(`${filePath}: GGUF version ${version} is not supported`);
    const tensorCount = Number(await cursor.u64());
    const entryCount = Number(await cursor.u64());
    const metadata = new Map<string, MetadataValue>();
    for (let i = 0; i < entryCount; i++) {
      const key = await cursor.string();
      const type = (await cursor.u32()) as ValueType;
      if (type === ValueType.ARRAY) {
        const itemType = (await cursor.u32()) as ValueType;
        const length = Number(await cursor.u64());
        const value: Array<string | number | bigint | boolean> = new Array(length);
        for (let j = 0; j < length; j++) value[j] = await cursor.scalar(itemType);
        metadata.set(key, { type, itemType, value });
      } else {
        metadata.set(key, { type, value: await cursor.scalar(type) } as MetadataValue);
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
    return { version, metadata, tensors };
  } finally {
    await handle.close();
  }
}
