import { CmosRtc } from './cmos-rtc';

describe('CmosRtc', () => {
  const rtc = new CmosRtc(256 * 2 ** 20, () => new Date(Date.UTC(2026, 10, 24, 17, 5, 42)));
  const reg = (i: number) => {
    rtc.write(0, 1, i);
    return rtc.read(1);
  };
  it('reads the time in BCD, 24-hour mode', () => {
    expect([reg(0), reg(2), reg(4), reg(7), reg(8), reg(9), reg(0x32)]).toEqual([0x42, 0x05, 0x17, 0x24, 0x11, 0x26, 0x20]);
    expect(reg(0x0a) & 0x80).toBe(0); // never "update in progress"
  });
  it('switches to binary when the guest sets DM', () => {
    rtc.write(0, 1, 0x0b);
    rtc.write(1, 1, 0x06);
    expect(reg(0)).toBe(42);
  });
  it('reports memory above 1 MiB in KiB', () => {
    expect(reg(0x30) | (reg(0x31) << 8)).toBe(0xffff);
  });
});
