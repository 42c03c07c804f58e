/**
 * virtio-net's migration extra state (NetExtraState: the active queue pairs,
 * the MAC the driver set, the RX mode, what the control queue changed) as a
 * migration stream or snapshot carries it, JSON from the input, loaded into a
 * two-pair device over a fake TAP. Expected: a StateError or a plain Error
 * naming what is wrong; a TypeError, RangeError or any other throw is a
 * crash, and so is a state that loads but does not save back (or, saved, no
 * longer loads, or loads into something else).
 */
import { GuestMemory, StateError } from '@tsvmm/virtio-core';
import type { Tap } from '../src/backend/tap';
import { NetExtraState, VirtioNetDevice } from '../src/device';

export const maxLen = 2048;
export const dictionary = [
  '"activePairs"',
  '"mac"',
  '"rxMode"',
  '"promisc"',
  '"allmulti"',
  '"nobcast"',
  '"52:54:00:12:34:56"',
  '"__proto__"',
  '1e309',
  '-1',
  '0.5',
  'true',
  'null',
  '[]',
  '{}',
];

const fakeTap = {
  name: 'fuzz-tap',
  setOffloads: () => true,
  watch: () => ({ start: () => undefined, stop: () => undefined, close: () => undefined }),
  close: () => undefined,
} as unknown as Tap;

function device(): VirtioNetDevice {
  const mem = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(64 * 1024) }]);
  const mac = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
  return new VirtioNetDevice(mem, { id: 'fuzz-net', tap: fakeTap, mac, pairs: 2, mtu: 1500, log: () => undefined });
}

export async function fuzz(data: Buffer): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    return; // not JSON: the stream's own parser refuses it before the device sees it
  }
  const dev = device();
  dev.loadNetState(raw as NetExtraState | undefined);
  // What loaded must save back, load again, and be the same state (the next migration of the same VM).
  const saved = JSON.stringify(dev.saveNetState());
  const again = device();
  again.loadNetState(JSON.parse(saved) as NetExtraState);
  if (JSON.stringify(again.saveNetState()) !== saved) throw new Error(`state changed on a second load: ${saved}`);
  await dev.destroy();
  await again.destroy();
}

export function isExpected(e: unknown): boolean {
  return e instanceof StateError || (e instanceof Error && e.constructor === Error && e.message.length > 0 && !/changed/.test(e.message));
}
