// The guest kit's scsi-* tests on vhost-scsi,backend=user against the project's vhost-user-scsi
// back-end process (the LUNs live there), through the real `vmm` binary: the same guest tests and
// strict SPC answers as plugins/virtio-scsi's suite, with the data plane in another process.
import * as fs from 'fs';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { Backend, expectPass, image, requireBuilt, startBackend, tmp, vmm } from './harness';

/** Byte at image offset o as the guest kit writes it. */
const patternByte = (o: number, seed: number) => (Math.floor(o / 512) * 31 + (o % 512) * 7 + seed) & 0xff;

/** A back-end with a writable 16 MiB LUN 0 and a read-only 4 MiB LUN 1. */
async function twoLuns(extra: string[] = []): Promise<{ a: string; b: string; be: Backend }> {
  const a = image(16 << 20);
  const b = image(4 << 20, 0x3c);
  const be = await startBackend([`0:file=${a},serial=SER0`, `1:file=${b},readonly=on,serial=SER1`], extra);
  return { a, b, be };
}

describeKvm('vhost-scsi,backend=user driven by the guest kit through the vhost-user-scsi back-end', () => {
  const backends: Backend[] = [];
  const withLuns = async (extra: string[] = []) => {
    const r = await twoLuns(extra);
    backends.push(r.be);
    return r;
  };
  beforeAll(requireBuilt);
  afterEach(async () => {
    for (const b of backends.splice(0)) await b.stop();
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('scan: REPORT LUNS, INQUIRY, VPD pages and capacities come from the back-end; guest kicks reach it without the VMM', async () => {
    const { be } = await withLuns(['--verbose']);
    const r = await vmm('test=scsi-scan strict=1', [`vhost-scsi,id=vs0,backend=user,socket=${be.socket}`]);
    expectPass(r, 'scsi-scan');
    expect(r.out).toContain("scsi-inquiry lun=0 type=0 vendor='TSVMM' product='VIRTUAL DISK'");
    expect(r.out).toContain("scsi-vpd lun=0 page=0x80 serial='SER0'");
    expect(r.out).toContain("scsi-vpd lun=1 page=0x80 serial='SER1'");
    expect(r.out).toContain('scsi-capacity lun=0 blocks=32768 block_size=512');
    expect(r.out).toContain('scsi-capacity lun=1 blocks=8192 block_size=512');
    expect(r.out).toContain('scsi-absent lun=5 qualifier=3 type=0x1f');
    const s = await be.stats();
    expect(s.connections).toBe(1);
    expect(s.rings[2].kicks).toBeGreaterThan(5);
    expect(s.rings[2].calls).toBeGreaterThan(5);
    // The handover as the back-end saw it, and the rings fetched back (GET_VRING_BASE) when the VMM ended.
    const requests = [...be.err().matchAll(/<- (\w+)/g)].map((m) => m[1]);
    expect(requests.slice(0, 5)).toEqual(['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'GET_QUEUE_NUM', 'SET_OWNER']);
    expect(requests).toContain('SET_MEM_TABLE');
    expect(requests.filter((x) => x === 'SET_VRING_KICK')).toHaveLength(3);
    expect(requests.slice(-3)).toEqual(['GET_VRING_BASE', 'GET_VRING_BASE', 'GET_VRING_BASE']);
    expect(be.err()).toMatch(/ring 2 stopped at \d+/);
  });

  describe.each([
    ['ioeventfd=on', '', []],
    ['ioeventfd=off (kicks through the VMM exit path, forwarded)', ',ioeventfd=off', []],
    ['4 request queues', ',num-queues=4', ['--num-queues', '4']],
  ])('with %s', (_name, props, beArgs) => {
    it("READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY, SYNCHRONIZE CACHE: the back-end's image holds the pattern", async () => {
      const { a, be } = await withLuns(beArgs as string[]);
      const r = await vmm('test=scsi-rw lun=0 lba=100 blocks=48 seed=7 strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}${props}`]);
      expectPass(r, 'scsi-rw');
      expect(r.out).toContain('scsi-rw lun=0 written=48 verified=48');
      const img = fs.readFileSync(a);
      for (let o = 100 * 512; o < 148 * 512; o++)
        if (img[o] !== patternByte(o, 7)) throw new Error(`image byte ${o} is ${img[o]}, expected ${patternByte(o, 7)}`);
      expect(img.subarray(0, 100 * 512).every((x) => x === 0)).toBe(true);
    });
  });

  it('--memory 8G: the back-end maps the 5 GiB region at 4 GiB from the memory table (as 1 GiB buffers) and serves the guest', async () => {
    const { a, be } = await withLuns(['--verbose']);
    const r = await vmm('test=scsi-rw lun=0 lba=100 blocks=16 seed=5 strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}`], {
      extra: ['--memory', '8G'],
    });
    expectPass(r, 'scsi-rw');
    expect(be.err()).toContain('memory table: [0x0, +0xc0000000) [0x100000000, +0x140000000)');
    const img = fs.readFileSync(a);
    for (let o = 100 * 512; o < 116 * 512; o++)
      if (img[o] !== patternByte(o, 5)) throw new Error(`image byte ${o} is ${img[o]}, expected ${patternByte(o, 5)}`);
  });

  it('UNMAP and WRITE SAME through the back-end: the image agrees', async () => {
    const { a, be } = await withLuns();
    const r = await vmm('test=scsi-unmap lun=0 lba=1024 blocks=24 seed=9 strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-unmap');
    expect(r.out).toContain('scsi-unmap lun=0 unmapped=8 zeroed=16 replicated=8');
    const img = fs.readFileSync(a);
    for (let lba = 1024; lba < 1040; lba++) expect(img.subarray(lba * 512, (lba + 1) * 512).every((x) => x === 0)).toBe(true);
  });

  it('each error case returns the exact sense; the read-only LUN is not written', async () => {
    const { b, be } = await withLuns();
    const r = await vmm('test=scsi-errors strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-errors');
    expect(r.out).toContain('scsi-sense case=write-protected key=0x07 asc=0x27 ascq=0x00');
    expect(r.out).toContain('scsi-sense case=lun-not-supported key=0x05 asc=0x25 ascq=0x00');
    expect(fs.readFileSync(b).every((x) => x === 0x3c)).toBe(true);
  });

  it('task management on the control queue: ABORT TASK, LUN and I_T nexus resets, AN query', async () => {
    const { be } = await withLuns();
    const r = await vmm('test=scsi-tmf strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-tmf');
    expect(r.out).toContain('scsi-tmf-ua type=lun-reset lun=0 asc=0x29 ascq=0x03');
    expect(r.out).toContain('scsi-tmf type=an-query response=0 event_actual=0x0');
  });

  it.each([
    ['shortreq', /command request needs 51 device-readable bytes/],
    ['noresp', /command response needs 108 device-writable bytes/],
    ['loop', /descriptor chain loops/],
  ])(
    'hostile chain (%s): the back-end reports it on the error eventfd, the adapter goes needs-reset, the guest resets it and it works again',
    async (kind, reason) => {
      const { be } = await withLuns();
      const r = await vmm(`test=scsi-hostile kind=${kind}`, [`vhost-scsi,id=vs0,socket=${be.socket}`]);
      expectPass(r, 'scsi-hostile');
      expect(r.out).toContain(`scsi-hostile kind=${kind} needs_reset=1 response=none recovered=1`);
      expect(be.err()).toMatch(reason);
      expect(r.err).toMatch(/vs0: the vhost-user back-end reported an error on queue \d+; the device needs reset/);
      expect((await be.stats()).connections).toBe(2); // the reset reconnected
    },
  );

  it('a READ offered only device-readable buffers is answered OVERRUN without breaking the adapter', async () => {
    const { be } = await withLuns();
    const r = await vmm('test=scsi-hostile kind=dirmix', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-hostile');
    expect(r.out).toContain('scsi-hostile kind=dirmix needs_reset=0 response=1 recovered=1');
  });

  it('masking: the queue vector masked while the back-end completes a READ sets the PBA bit and no interrupt; unmasking delivers it', async () => {
    const { be } = await withLuns();
    const r = await vmm('test=scsi-msix-mask blocks=8', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-msix-mask');
    expect(r.out).toContain('scsi-msix-mask pba=1 interrupts_while_masked=0');
    expect(r.out).toContain('scsi-msix-mask delivered_after_unmask=1');
    expect((await be.stats()).rings[2].calls).toBeGreaterThan(0);
  });

  it('a 4096-byte logical block LUN reports its size and round-trips the pattern', async () => {
    const a = image(8 << 20);
    const be = await startBackend([`0:file=${a},logical-block-size=4096`]);
    backends.push(be);
    const r = await vmm('test=scsi-rw lun=0 lba=10 blocks=8 seed=2 strict=1', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    expectPass(r, 'scsi-rw');
    expect(r.out).toContain('scsi-capacity lun=0 blocks=2048 block_size=4096');
  });

  it.each([
    [
      'backend=user,socket=/nonexistent/vu.sock',
      /--device vhost-scsi,id=vs0: cannot connect to the vhost-user back-end at \/nonexistent\/vu.sock: no such socket \(ENOENT\); is the back-end running\?/,
    ],
    [
      'backend=kernel,wwpn=naa.5001405abcdef012',
      /--device vhost-scsi,id=vs0: backend=kernel needs \/dev\/vhost-scsi, which this host does not have/,
    ],
    ['backend=kernel', /--device vhost-scsi,id=vs0: backend=kernel needs wwpn=naa.XXXX/],
    ['backend=user', /--device vhost-scsi,id=vs0: backend=user needs socket=PATH/],
  ])('start-up errors say what is missing: %s', async (props, message) => {
    if (props.includes('kernel,wwpn') && fs.existsSync('/dev/vhost-scsi')) return; // a host with vhost-scsi gets further
    const r = await vmm('test=pci-scan', [`vhost-scsi,id=vs0,${props}`]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(message);
  });

  it('num-queues beyond what the back-end serves is refused at start-up', async () => {
    const { be } = await withLuns();
    const r = await vmm('test=pci-scan', [`vhost-scsi,id=vs0,socket=${be.socket},num-queues=4`]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/--device vhost-scsi,id=vs0: num-queues=4: the vhost-user back-end at .* serves 1 request queue\(s\)/);
  });
});
