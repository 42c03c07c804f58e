// iothread-vq-mapping: the parser and the plugin's refusals (before any file is opened or worker started).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { DeviceContext } from '@tsvmm/pci';
import { createVirtioBlk, parseVqMapping } from './index';

describe('parseVqMapping', () => {
  it('round-robin: queue q on the (q mod n)-th iothread', () => {
    expect(parseVqMapping('io0;io1', 2)).toEqual([
      { iothread: 'io0', queues: [0] },
      { iothread: 'io1', queues: [1] },
    ]);
    expect(parseVqMapping('a;b', 5)).toEqual([
      { iothread: 'a', queues: [0, 2, 4] },
      { iothread: 'b', queues: [1, 3] },
    ]);
    expect(parseVqMapping('io0', 3)).toEqual([{ iothread: 'io0', queues: [0, 1, 2] }]);
  });

  it('explicit: each iothread with its queues, sorted', () => {
    expect(parseVqMapping('io1:3+1;io0:0+2', 4)).toEqual([
      { iothread: 'io1', queues: [1, 3] },
      { iothread: 'io0', queues: [0, 2] },
    ]);
  });

  it.each([
    ['io0:0;io1:2', 2, 'io1: queue 2 is out of range (num-queues=2: queues 0..1)'],
    ['io0:0+1;io1:1', 2, 'queue 1 is mapped twice (io0 and io1)'],
    ['io0:0+0;io1:1', 2, 'queue 0 is mapped twice (io0)'],
    ['io0:0;io1:1', 3, 'queue 2 mapped to no iothread'],
    ['io0:0', 4, 'queues 1, 2, 3 mapped to no iothread'],
    ['io0;io0', 2, 'iothread io0 is named twice'],
    ['io0;io1;io2', 2, '3 iothreads for 2 queues (each iothread needs a queue)'],
    ['io0:0;io1', 2, 'either every iothread names its queues (io0:0+2;io1:1) or none does (io0;io1)'],
    ['io0:', 2, "io0: '' is not a queue number (queues are written 0+2)"],
    ['io0:-1', 2, "io0: '-1' is not a queue number"],
    ['io0:0x1', 2, "io0: '0x1' is not a queue number"],
    ['io0:99999999999', 2, "io0: '99999999999' is not a queue number"],
    ['io0;;io1', 3, "'' is not an iothread id"],
    ['0io;io1', 2, "'0io' is not an iothread id"],
    ['', 1, "'' is not an iothread id"],
  ])('%s with %d queues: %s', (value, n, msg) => {
    expect(() => parseVqMapping(value, n)).toThrow(msg);
  });
});

describe('virtio-blk iothread-vq-mapping property', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-vqmap-'));
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(4096));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The refusals come before the context is used (no file opened, no worker started).
  const ctx = {} as DeviceContext;
  const props = (extra: Record<string, string | number>) => ({ file, readonly: false, 'num-queues': 2, ...extra });

  it.each([
    [{ iothread: 'io0', 'iothread-vq-mapping': 'io0;io1' }, 'iothread= and iothread-vq-mapping= exclude each other'],
    [{ 'iothread-vq-mapping': 'io0:0;io1:5' }, 'iothread-vq-mapping: io1: queue 5 is out of range (num-queues=2: queues 0..1)'],
    [{ 'iothread-vq-mapping': 'io0:0;io1:0' }, 'iothread-vq-mapping: queue 0 is mapped twice (io0 and io1)'],
    [{ 'iothread-vq-mapping': 'io0:1', 'num-queues': 2 }, 'iothread-vq-mapping: queue 0 mapped to no iothread'],
    [{ 'iothread-vq-mapping': 'io0;io1', 'num-queues': 1 }, 'iothread-vq-mapping: 2 iothreads for 1 queue'],
  ])('%j is refused: %s', (extra, msg) => {
    expect(() => createVirtioBlk(ctx, 'd0', props(extra))).toThrow(`--device virtio-blk,id=d0: ${msg}`);
  });
});
