/**
 * Streams a GGUF file: metadata and tensor infos first, then each tensor's data as its producer yields it, so a
 * 700 MB model is never held in memory at once.
 */
import { open, rename, rm } from 'node:fs/promises';
import { DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, TensorType, ValueType, tensorByteLength, type MetadataValue } from './format.js';

export interface TensorSource {
  name: string;
  dims: number[];
  type: TensorType;
  /** Yields the tensor's bytes, in order; their total must equal its byte length. */
  data(): Iterable<Uint8Array>;
}

/** Little-endian serializer for the header part. */
class HeaderBuffer {
  private chunks: Buffer[] = [];

  u32(value: number): void {
    const buffer = Buffer.alloc(4);
    buffer.writeUInt32LE(value);
    this.chunks.push(buffer);
  }

  u64(value: number | bigint): void {
    const buffer = Buffer.alloc(8);
    buffer.writeBigUInt64LE(BigInt(value));
    this.chunks.push(buffer);
  }

  string(value: string): void {
    const bytes = Buffer.from(value, 'utf8');
    this.u64(bytes.length);
    this.chunks.push(bytes);
  }

  scalar(type: ValueType, value: string | number | bigint | boolean): void {
    const buffer = Buffer.alloc(8);
    switch (type) {
      case ValueType.UINT8: buffer.writeUInt8(value as number); this.chunks.push(buffer.subarray(0, 1)); return;
      case ValueType.INT8: buffer.writeInt8(value as number); this.chunks.push(buffer.subarray(0, 1)); return;
      case ValueType.UINT16: buffer.writeUInt16LE(value as number); this.chunks.push(buffer.subarray(0, 2)); return;
      case ValueType.INT16: buffer.writeInt16LE(value as number); this.chunks.push(buffer.subarray(0, 2)); return;
      case ValueType.UINT32: buffer.writeUInt32LE(value as number); this.chunks.push(buffer.subarray(0, 4)); return;
      case ValueType.INT32: buffer.writeInt32LE(value as number); this.chunks.push(buffer.subarray(0, 4)); return;
      case ValueType.FLOAT32: buffer.writeFloatLE(value as number); this.chunks.push(buffer.subarray(0, 4)); return;
      case ValueType.FLOAT64: buffer.writeDoubleLE(value as number); this.chunks.push(buffer); return;
      case ValueType.BOOL: buffer.writeUInt8(value ? 1 : 0); this.chunks.push(buffer.subarray(0, 1)); return;
      case ValueType.UINT64: buffer.writeBigUInt64LE(BigInt(value as bigint)); this.chunks.push(buffer); return;
      case ValueType.INT64: buffer.writeBigInt64LE(BigInt(value as bigint)); this.chunks.push(buffer); return;
      case ValueType.STRING: this.string(value as string); return;
      default: throw new Error(`cannot write a scalar of type ${type}`);
    }
  }

  value(entry: MetadataValue): void {
    this.u32(entry.type);
    if (entry.type !== ValueType.ARRAY) {
      this.scalar(entry.type, entry.value);
      return;
    }
    this.u32(entry.itemType);
    this.u64(entry.value.length);
    for (const item of entry.value) this.scalar(entry.itemType, item);
  }

  get length(): number {
    return this.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  }

  pad(alignment: number): void {
    const rest = this.length % alignment;
    if (rest !== 0) this.chunks.push(Buffer.alloc(alignment - rest));
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

const align = (value: number, alignment: number) => Math.ceil(value / alignment) * alignment;

/** Writes `metadata` and `tensors` to `filePath` (through a temporary file renamed at the end). */
export async function writeGguf(filePath: string, metadata: Map<string, MetadataValue>, tensors: TensorSource[]): Promise<void> {
  const alignment = DEFAULT_ALIGNMENT;
  const header = new HeaderBuffer();
  header.u32(GGUF_MAGIC);
  header.u32(GGUF_VERSION);
  header.u64(tensors.length);
  const entries = new Map(metadata);
  entries.set('general.alignment', { type: ValueType.UINT32, value: alignment });
  header.u64(entries.size);
  for (const [key, value] of entries) {
    header.string(key);
    header.value(value);
  }
  let offset = 0;
  const sizes = tensors.map((tensor) => tensorByteLength(tensor.dims, tensor.type));
  tensors.forEach((tensor, index) => {
    header.string(tensor.name);
    header.u32(tensor.dims.length);
    for (const dim of tensor.dims) header.u64(dim);
    header.u32(tensor.type);
    header.u64(offset);
    offset = align(offset + sizes[index]!, alignment);
  });
  header.pad(alignment);

  const temporary = `${filePath}.${process.pid}.${Date.now()}.tmp`;
  const handle = await open(temporary, 'w');
  try {
    await handle.write(header.toBuffer());
    for (const [index, tensor] of tensors.entries()) {
      let written = 0;
      for (const chunk of tensor.data()) {
        await handle.write(chunk);
        written += chunk.length;
      }
      if (written !== sizes[index]) throw new Error(`tensor ${tensor.name}: wrote ${written} bytes, expected ${sizes[index]}`);
      const padding = align(written, alignment) - written;
      if (padding > 0) await handle.write(Buffer.alloc(padding));
    }
    await handle.close();
    await rename(temporary, filePath);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temporary, { force: true });
    throw error;
  }
}
