// The guest kit's hostile suite (tools/guest-kit/src/hostile.c) against virtio-blk: zero-length
// status and data buffers at guest-physical 0 and outside RAM, with ioeventfd on and off and with
// an iothread; and Linux's largest legal request, a queue-size indirect table.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass as expectPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-blk-hostile-boundary-'));

function image(name: string, sectors: number, fill = false): string {
  const p = path.join(tmp, name);
  const b = Buffer.alloc(sectors * 512);
  if (fill) for (let i = 0; i < b.length; i++) b[i] = (i * 13 + (i >> 9)) & 0xff;
  fs.writeFileSync(p, b);
  return p;
}

describeKvm('virtio-blk: hostile guest (hostile.c)', () => {
  beforeAll(() => requireBuilt());

  it.each([
    ['zero-status', '0', 'ioeventfd=on'],
    ['zero-status', 'oob', 'ioeventfd=on'],
    ['zero-status', '0', 'ioeventfd=off'],
    ['zero-status', 'oob', 'ioeventfd=off'],
    ['zero-status', '0', 'iothread=io0'],
    ['zero-status', 'oob', 'iothread=io0'],
    ['zero-data', '0', 'ioeventfd=on'],
    ['zero-data', 'oob', 'ioeventfd=off'],
    ['zero-data', '0', 'iothread=io0'],
  ])('%s buffer at %s (%s): the VMM stays up, the guest reads needs-reset, a reset brings the disk back', async (kind, at, opt) => {
    const img = image(`${kind}-${at}-${opt.replace(/\W/g, '_')}.img`, 512);
    const r = await runGuestKit(`test=hostile-blk kind=${kind} at=${at}`, [`virtio-blk,id=d0,file=${img},${opt}`], { timeoutMs: 60_000 });
    expectPass(r, 'hostile-blk');
    expect(r.out).toContain(`hostile dev=blk kind=${kind} at=${at} needs_reset=1 config_irq=1`);
    expect(r.out).toContain('hostile dev=blk recovered=1');
    // One line for the guest error, none for a VMM bug.
    expect(r.err.match(/d0: guest error, device needs reset/g)).toHaveLength(1);
    expect(r.err).not.toMatch(/internal error|terminate called|Unhandled|kvm-native: exception/);
    // The recovery write reached the image.
    const data = fs.readFileSync(img);
    expect(data[256 * 512 + 10]).toBe((10 * 7 + 3) & 0xff);
  });

  it.each(['ioeventfd=on', 'iothread=io0'])('a legal indirect table of exactly queue-size entries completes OK (%s)', async (opt) => {
    const img = image(`full-indirect-${opt.replace(/\W/g, '_')}.img`, 1024, true);
    const r = await runGuestKit('test=hostile-blk kind=full-indirect qsize=256', [`virtio-blk,id=d0,file=${img},${opt}`], {
      timeoutMs: 60_000,
    });
    expectPass(r, 'hostile-blk');
    const m =
      /hostile dev=blk kind=full-indirect entries=(\d+) status=0 used_len=(\d+) sectors=(\d+) crc32=0x([0-9a-f]{8}) needs_reset=0/.exec(
        r.out,
      );
    expect(m).not.toBeNull();
    const [entries, usedLen, sectors, crc] = [Number(m![1]), Number(m![2]), Number(m![3]), parseInt(m![4], 16)];
    expect(entries).toBe(256);
    expect(sectors).toBe(entries - 2);
    expect(usedLen).toBe(sectors * 512 + 1);
    expect(crc).toBe(zlib.crc32(fs.readFileSync(img).subarray(0, sectors * 512)));
    expect(r.err).not.toMatch(/needs reset/);
  });
});
