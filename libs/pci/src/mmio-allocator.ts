/** Hands out naturally aligned ranges of an MMIO window (BAR placement, as firmware would). */
export class MmioAllocator {
  private next: number;

  constructor(
    readonly base: number,
    readonly size: number,
  ) {
    this.next = base;
  }

  /** A `size`-byte range aligned to max(size, align) (BARs must be naturally aligned). */
  allocate(size: number, align = size): number {
    const a = Math.max(align, 4096);
    const addr = Math.ceil(this.next / a) * a;
    if (addr + size > this.base + this.size)
      throw new RangeError(`MMIO window [0x${this.base.toString(16)}, +0x${this.size.toString(16)}) is full`);
    this.next = addr + size;
    return addr;
  }
}
