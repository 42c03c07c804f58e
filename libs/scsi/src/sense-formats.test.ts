/**
 * Every CHECK CONDITION the disk produces, with its exact sense key, ASC and
 * ASCQ, in fixed format (D_SENSE=0) and in descriptor format (D_SENSE=1).
 */
import type { ScsiDisk } from './disk';
import {
  type Buffers,
  type SenseFormat,
  type TempDisk,
  cdb,
  expectSense,
  memDisk,
  removeTempDirs,
  run,
  rw10,
  rw16,
  setDescriptorSense,
  tempDisk,
} from './test-util';

interface Case {
  name: string;
  disk: 'file' | 'readonly' | 'failing';
  cdb: () => Uint8Array;
  buffers?: Buffers;
  /** Runs after D_SENSE is set, before the command. */
  before?: (disk: ScsiDisk) => void;
  sense: [key: number, asc: number, ascq: number];
}

const block = (fill = 0): Buffers => ({ out: new Uint8Array(512).fill(fill) });

const CASES: Case[] = [
  { name: 'unknown opcode', disk: 'file', cdb: () => cdb(0xff), sense: [0x05, 0x20, 0x00] },
  { name: 'variable-length CDB (group 3)', disk: 'file', cdb: () => cdb(0x7f, 0, 0, 0, 0, 0, 0, 0x18), sense: [0x05, 0x20, 0x00] },
  { name: 'unsupported VPD page', disk: 'file', cdb: () => cdb(0x12, 1, 0x99, 0, 255, 0), buffers: { in: 255 }, sense: [0x05, 0x24, 0x00] },
  { name: 'NACA in the CONTROL byte', disk: 'file', cdb: () => cdb(0x00, 0, 0, 0, 0, 0x04), sense: [0x05, 0x24, 0x00] },
  { name: 'LBA out of range', disk: 'file', cdb: () => rw10(0x28, 2048, 1), buffers: { in: 512 }, sense: [0x05, 0x21, 0x00] },
  {
    name: 'LBA + length overflows',
    disk: 'file',
    cdb: () => rw16(0x88, 0xfffffffffffffffen, 4),
    buffers: { in: 2048 },
    sense: [0x05, 0x21, 0x00],
  },
  { name: 'write to a read-only disk', disk: 'readonly', cdb: () => rw10(0x2a, 0, 1), buffers: block(), sense: [0x07, 0x27, 0x00] },
  { name: 'host read failure', disk: 'failing', cdb: () => rw10(0x28, 0, 1), buffers: { in: 512 }, sense: [0x03, 0x11, 0x00] },
  { name: 'host write failure', disk: 'failing', cdb: () => rw10(0x2a, 0, 1), buffers: block(), sense: [0x03, 0x0c, 0x00] },
  { name: 'VERIFY miscompare', disk: 'file', cdb: () => rw10(0x2f, 0, 1, 0x02), buffers: block(0xab), sense: [0x0e, 0x1d, 0x00] },
  {
    name: 'MODE SENSE saved values',
    disk: 'file',
    cdb: () => cdb(0x1a, 0, 0xff, 0, 255, 0),
    buffers: { in: 255 },
    sense: [0x05, 0x39, 0x00],
  },
  {
    name: 'MODE SELECT setting RCD',
    disk: 'file',
    cdb: () => cdb(0x15, 0x10, 0, 0, 24, 0),
    buffers: { out: new Uint8Array([0, 0, 0, 0, 0x08, 0x12, 0x05, ...new Array(17).fill(0)]) },
    sense: [0x05, 0x26, 0x00],
  },
  {
    name: 'UNMAP parameter list of 4 bytes',
    disk: 'file',
    cdb: () => cdb(0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0),
    buffers: { out: new Uint8Array(4) },
    sense: [0x05, 0x1a, 0x00],
  },
  {
    name: 'I_T nexus loss unit attention',
    disk: 'file',
    cdb: () => cdb(0x00),
    before: (d) => d.reset('nexus-reset'),
    sense: [0x06, 0x29, 0x07],
  },
  { name: 'command after close', disk: 'failing', cdb: () => cdb(0x00), before: (d) => d.close(), sense: [0x02, 0x04, 0x00] },
];

let disks: TempDisk[] = [];
afterEach(() => {
  for (const d of disks) d.cleanup();
  disks = [];
});
afterAll(removeTempDirs);

function makeDisk(kind: Case['disk']): ScsiDisk {
  if (kind === 'failing') return memDisk(1 << 20, {}, { read: true, write: true, flush: true }).disk;
  const t = tempDisk(1 << 20, { readonly: kind === 'readonly' });
  disks.push(t);
  return t.disk;
}

describe.each(['fixed', 'descriptor'] as SenseFormat[])('%s sense format', (format) => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (_, c) => {
    const disk = makeDisk(c.disk);
    if (format === 'descriptor') await setDescriptorSense(disk, true);
    c.before?.(disk);
    const res = await run(disk, c.cdb(), c.buffers);
    expectSense(res, ...c.sense, format);
    expect(disk.info().checkConditions).toBe(1);
  });
});
