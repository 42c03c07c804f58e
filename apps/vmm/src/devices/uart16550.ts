/**
 * A 16550A UART (COM1 at 0x3F8, IRQ 4): enough for Linux's 8250 driver in
 * polled and interrupt mode, and for the guest kit's polled output.
 */
import { BusDevice } from '@tsvmm/pci';

const RBR_THR_DLL = 0;
const IER_DLM = 1;
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO_ENABLED = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MCR_OUT2 = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_DCD = 0x80;
const RX_FIFO_MAX = 4096;

export class Uart16550 implements BusDevice {
  private ier = 0;
  private lcr = 0x03;
  private mcr = MCR_OUT2;
  private scr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private fcr = 0;
  private rx: number[] = [];
  /** THR empty interrupt pending (cleared by reading IIR when it is the cause, or writing THR). */
  private thriPending = false;
  private irqLevel = false;

  constructor(
    private readonly output: (byte: number) => void,
    private readonly setIrq: (level: boolean) => void,
  ) {}

  /** Migration: the registers and the receive FIFO. */
  saveState(): Record<string, unknown> {
    return {
      ier: this.ier,
      lcr: this.lcr,
      mcr: this.mcr,
      scr: this.scr,
      dll: this.dll,
      dlm: this.dlm,
      fcr: this.fcr,
      rx: [...this.rx],
      thriPending: this.thriPending,
    };
  }

  loadState(s: Record<string, unknown>): void {
    const n = (k: string) => {
      const v = s[k];
      if (typeof v !== 'number') throw new Error(`serial state: '${k}' is missing`);
      return v & 0xff;
    };
    this.ier = n('ier');
    this.lcr = n('lcr');
    this.mcr = n('mcr');
    this.scr = n('scr');
    this.dll = n('dll');
    this.dlm = n('dlm');
    this.fcr = n('fcr');
    this.rx = Array.isArray(s.rx) ? (s.rx as number[]).slice(0, RX_FIFO_MAX) : [];
    this.thriPending = s.thriPending === true;
    this.irqLevel = false;
    this.updateIrq();
  }

  /** Bytes arriving from the host side (stdin). Excess beyond the FIFO is dropped. */
  receive(bytes: Uint8Array): void {
    for (const b of bytes) if (this.rx.length < RX_FIFO_MAX) this.rx.push(b);
    this.updateIrq();
  }

  read(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR_DLL: {
        if (dlab) return this.dll;
        const b = this.rx.shift() ?? 0;
        this.updateIrq();
        return b;
      }
      case IER_DLM:
        return dlab ? this.dlm : this.ier;
      case IIR_FCR: {
        const iir = this.iir();
        if ((iir & 0x0f) === IIR_THRI) {
          this.thriPending = false;
          this.updateIrq();
        }
        return iir | (this.fcr & 1 ? IIR_FIFO_ENABLED : 0);
      }
      case LCR:
        return this.lcr;
      case MCR:
        return this.mcr;
      case LSR:
        return (this.rx.length ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
      case MSR:
        return this.mcr & MCR_LOOP ? (this.mcr & 0x0f) << 4 : MSR_CTS | MSR_DSR | MSR_DCD;
      case SCR:
        return this.scr;
      default:
        return 0xff;
    }
  }

  write(offset: number, _size: number, value: number | bigint): void {
    const v = Number(value) & 0xff;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR_DLL:
        if (dlab) {
          this.dll = v;
          return;
        }
        if (this.mcr & MCR_LOOP) this.rx.push(v);
        else this.output(v);
        // The byte leaves at once: THR is empty again.
        this.thriPending = true;
        this.updateIrq();
        return;
      case IER_DLM:
        if (dlab) {
          this.dlm = v;
          return;
        }
        {
          const was = this.ier;
          this.ier = v & (IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
          // Enabling THRI with an empty THR raises it immediately, as on hardware.
          if (!(was & IER_THRI) && this.ier & IER_THRI) this.thriPending = true;
          this.updateIrq();
        }
        return;
      case IIR_FCR:
        this.fcr = v;
        if (v & 0x02) this.rx = [];
        this.updateIrq();
        return;
      case LCR:
        this.lcr = v;
        return;
      case MCR:
        this.mcr = v & 0x1f;
        this.updateIrq();
        return;
      case SCR:
        this.scr = v;
        return;
      default:
        return;
    }
  }

  private iir(): number {
    if (this.ier & IER_RDI && this.rx.length) return IIR_RDI;
    if (this.ier & IER_THRI && this.thriPending) return IIR_THRI;
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    const level = this.iir() !== IIR_NO_INT;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.setIrq(level);
    }
  }
}
