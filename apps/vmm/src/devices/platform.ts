/** Small platform devices: the i8042 reset line (command port 0x64), the test exit port, and an ignore sink for port 0x80. */
import { BusDevice } from '@tsvmm/pci';

/**
 * The i8042 keyboard controller's command port (0x64) only as far as a guest
 * uses it to reset the machine (command 0xFE pulses the CPU reset line).
 * 0x60/0x64 reads say "no data, input buffer empty".
 */
export class I8042Command implements BusDevice {
  constructor(private readonly onReset: () => void) {}
  read(): number {
    return 0x00; // status: output buffer empty, input buffer empty
  }
  write(_offset: number, _size: number, value: number | bigint): void {
    if ((Number(value) & 0xff) === 0xfe) this.onReset();
  }
}

/** Port 0xF4: a 1-4 byte write ends the VM with that exit code (the guest kit's exit port). */
export class ExitPort implements BusDevice {
  constructor(private readonly onExit: (code: number) => void) {}
  read(): number {
    return 0xffffffff;
  }
  write(_offset: number, _size: number, value: number | bigint): void {
    this.onExit(Number(value) & 0xff);
  }
}

/** Accepts and ignores accesses (POST code port 0x80 and similar). */
export class Sink implements BusDevice {
  read(_o: number, size: number): number {
    return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
  }
  write(): void {}
}
