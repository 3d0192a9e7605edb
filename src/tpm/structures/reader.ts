import { TpmStructureError } from '../errors.js'

/**
 * Bounds-checked big-endian reader for TPM structures. Every read checks the remaining length,
 * so a truncated or lying size field becomes a TpmStructureError naming the field, never a
 * RangeError from deep inside Buffer.
 */
export class Reader {
  private offset = 0
  private readonly bytes: Uint8Array
  private readonly what: string

  constructor(bytes: Uint8Array, what: string) {
    this.bytes = bytes
    this.what = what
  }

  get remaining(): number {
    return this.bytes.length - this.offset
  }

  get position(): number {
    return this.offset
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new TpmStructureError(
        `${this.what}: truncated at ${field} (needs ${n} bytes at offset ${this.offset}, ${this.remaining} left)`,
      )
    }
  }

  u8(field: string): number {
    this.need(1, field)
    return this.bytes[this.offset++]!
  }

  u16(field: string): number {
    this.need(2, field)
    const v = (this.bytes[this.offset]! << 8) | this.bytes[this.offset + 1]!
    this.offset += 2
    return v
  }

  u32(field: string): number {
    this.need(4, field)
    const b = this.bytes
    const o = this.offset
    this.offset += 4
    return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0
  }

  u64(field: string): bigint {
    const hi = this.u32(field)
    const lo = this.u32(field)
    return (BigInt(hi) << 32n) | BigInt(lo)
  }

  bytesOf(n: number, field: string): Uint8Array {
    this.need(n, field)
    const out = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  /** A TPM2B: u16 size then that many bytes; `max` bounds the size the spec allows. */
  sized(field: string, max = 0xffff): Uint8Array {
    const n = this.u16(`${field}.size`)
    if (n > max) throw new TpmStructureError(`${this.what}: ${field} size ${n} exceeds ${max}`)
    return this.bytesOf(n, field)
  }

  /** Ensures nothing trails the structure (size fields that lie show up here). */
  end(): void {
    if (this.remaining !== 0) {
      throw new TpmStructureError(`${this.what}: ${this.remaining} unexpected trailing bytes`)
    }
  }
}
