/**
 * The MC146818 CMOS RTC at ports 0x70 (index) / 0x71 (data): wall-clock time in
 * BCD, 24-hour mode, never "update in progress", and the CMOS memory size
 * bytes. Enough for a kernel reading the time at boot; no periodic interrupts.
 */
import { BusDevice } from '@tsvmm/pci';

const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const B_24H = 0x02;
const B_BINARY = 0x04;

export class CmosRtc implements BusDevice {
  private index = 0;
  private readonly ram = new Uint8Array(128);

  constructor(
    memoryBytes: number,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.ram[REG_A] = 0x26; // 32.768 kHz base, 1024 Hz rate, UIP clear
    this.ram[REG_B] = B_24H;
    this.ram[REG_D] = 0x80; // valid RAM and time
    // Extended memory in KiB above 1 MiB (0x30/0x31, capped) and 64 KiB blocks above 16 MiB (0x34/0x35).
    const ext = Math.min(Math.max(0, memoryBytes - 2 ** 20) / 1024, 0xffff);
    this.ram[0x17] = this.ram[0x30] = ext & 0xff;
    this.ram[0x18] = this.ram[0x31] = ext >> 8;
    const above16 = Math.min(Math.max(0, Math.min(memoryBytes, 0xc000_0000) - 16 * 2 ** 20) / 65536, 0xffff);
    this.ram[0x34] = above16 & 0xff;
    this.ram[0x35] = above16 >> 8;
  }

  read(offset: number): number {
    if (offset === 0) return 0xff;
    const i = this.index;
    if (i <= 9 || i === 0x32) return this.timeRegister(i);
    if (i === REG_C) {
      const v = this.ram[REG_C];
      this.ram[REG_C] = 0;
      return v;
    }
    return this.ram[i];
  }

  write(offset: number, _size: number, value: number | bigint): void {
    const v = Number(value) & 0xff;
    if (offset === 0) {
      this.index = v & 0x7f; // bit 7 is the NMI mask
      return;
    }
    if (this.index === REG_A) this.ram[REG_A] = (this.ram[REG_A] & 0x80) | (v & 0x7f);
    else if (this.index === REG_B) this.ram[REG_B] = v;
    else if (this.index > REG_D) this.ram[this.index] = v;
  }

  private timeRegister(i: number): number {
    const d = this.now();
    const fields: Record<number, number> = {
      0: d.getUTCSeconds(),
      2: d.getUTCMinutes(),
      4: d.getUTCHours(),
      6: d.getUTCDay() + 1,
      7: d.getUTCDate(),
      8: d.getUTCMonth() + 1,
      9: d.getUTCFullYear() % 100,
      0x32: Math.floor(d.getUTCFullYear() / 100),
    };
    const v = fields[i] ?? this.ram[i];
    return this.ram[REG_B] & B_BINARY ? v : (Math.floor(v / 10) << 4) | (v % 10);
  }
}
