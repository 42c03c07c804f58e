import {
  decodeHeader,
  decodeMemTable,
  decodeVringAddr,
  decodeVringState,
  encodeMemTable,
  encodeMessage,
  encodeVringAddr,
  encodeVringState,
  FLAG_NEED_REPLY,
  HEADER_SIZE,
  MAX_MEM_REGIONS,
  readU64,
  u64Payload,
  VhostUserProtocolError,
  VhostUserRequest,
} from './protocol';
import { VhostUserError, VhostUserFrontend } from './frontend';

describe('vhost-user message layouts', () => {
  it('a message is a little-endian header (request, flags with version 1, size) followed by the payload', () => {
    const m = encodeMessage(VhostUserRequest.SET_FEATURES, FLAG_NEED_REPLY, u64Payload(0x1_4000_0000n));
    expect(m.length).toBe(HEADER_SIZE + 8);
    expect(Array.from(m.subarray(0, 12))).toEqual([2, 0, 0, 0, 0x9, 0, 0, 0, 8, 0, 0, 0]);
    expect(decodeHeader(m)).toEqual({ request: 2, flags: 0x9, size: 8 });
    expect(readU64(m.subarray(HEADER_SIZE))).toBe(0x1_4000_0000n);
  });

  it("vring state, vring address and memory table round-trip with the specification's sizes", () => {
    expect(encodeVringState({ index: 2, num: 256 }).length).toBe(8);
    expect(decodeVringState(encodeVringState({ index: 2, num: 256 }))).toEqual({ index: 2, num: 256 });
    const a = { index: 1, flags: 0, desc: 0x7f0000001000n, used: 0x7f0000003000n, avail: 0x7f0000002000n, log: 0n };
    expect(encodeVringAddr(a).length).toBe(40);
    expect(decodeVringAddr(encodeVringAddr(a))).toEqual(a);
    const regions = [
      { guestPhysAddr: 0n, size: 0xc0000000n, userAddr: 0x7f0000000000n, mmapOffset: 0n },
      { guestPhysAddr: 0x100000000n, size: 0x40000000n, userAddr: 0x7f00c0000000n, mmapOffset: 0n },
    ];
    const t = encodeMemTable(regions);
    expect(t.length).toBe(8 + 2 * 32);
    expect(decodeMemTable(t)).toEqual(regions);
  });

  it('short or oversized payloads are protocol errors, not crashes', () => {
    expect(() => decodeVringState(new Uint8Array(4))).toThrow(VhostUserProtocolError);
    expect(() => decodeVringAddr(new Uint8Array(39))).toThrow(/need 40/);
    const t = encodeMemTable([{ guestPhysAddr: 0n, size: 1n, userAddr: 0n, mmapOffset: 0n }]);
    new DataView(t.buffer).setUint32(0, 5, true);
    expect(() => decodeMemTable(t)).toThrow(/5 regions in 40 bytes/);
    expect(() => encodeMemTable(Array(MAX_MEM_REGIONS + 1).fill({ guestPhysAddr: 0n, size: 1n, userAddr: 0n, mmapOffset: 0n }))).toThrow(
      /at most 8/,
    );
  });

  it('connecting where no back-end listens says so', () => {
    let err: unknown;
    try {
      VhostUserFrontend.connect('/nonexistent/dir/vu.sock');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VhostUserError);
    expect((err as VhostUserError).kind).toBe('connect');
    expect((err as Error).message).toBe(
      'cannot connect to the vhost-user back-end at /nonexistent/dir/vu.sock: no such socket (ENOENT); is the back-end running?',
    );
  });
});
