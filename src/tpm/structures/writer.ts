/** Big-endian writer for TPM structures (the inverse of Reader). */
export class Writer {
  private readonly parts: number[] = []

  u8(v: number): this {
    this.parts.push(v & 0xff)
    return this
  }

  u16(v: number): this {
    this.parts.push((v >>> 8) & 0xff, v & 0xff)
    return this
  }

  u32(v: number): this {
    this.parts.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff)
    return this
  }

  bytes(b: Uint8Array): this {
    for (const x of b) this.parts.push(x)
    return this
  }

  /** A TPM2B: u16 size, then the bytes. */
  sized(b: Uint8Array): this {
    if (b.length > 0xffff) throw new RangeError('TPM2B payload larger than 65535 bytes')
    return this.u16(b.length).bytes(b)
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.parts)
  }
}
