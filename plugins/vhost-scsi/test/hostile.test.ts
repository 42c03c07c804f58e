// The guest kit's hostile suite (tools/guest-kit/src/hostile.c) on vhost-scsi,backend=user with the
// project's vhost-user-scsi back-end: zero-length response and data-in buffers at guest-physical 0 and
// outside RAM. The back-end breaks its device model, reports it on the error eventfd, the adapter goes
// needs-reset, and the guest's reset reconnects and works again; neither process goes down.
import * as fs from 'fs';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { Backend, expectPass, image, requireBuilt, startBackend, tmp, vmm } from './harness';

describeKvm('vhost-scsi,backend=user: hostile guest (hostile.c)', () => {
  const backends: Backend[] = [];
  beforeAll(requireBuilt);
  afterEach(async () => {
    for (const b of backends.splice(0)) await b.stop();
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it.each([
    ['zero-resp', '0', 'on', /descriptor 1 has length 0/],
    ['zero-resp', 'oob', 'off', /buffer \[0x7fff00000000, \+0x0\) is not guest RAM/],
    ['zero-data', '0', 'on', /descriptor 2 has length 0/],
    ['zero-data', 'oob', 'on', /buffer \[0x7fff00000000, \+0x0\) is not guest RAM/],
  ])('%s buffer at %s (ioeventfd=%s): needs-reset through the back-end, a reset brings the adapter back', async (kind, at, io, reason) => {
    const be = await startBackend([`0:file=${image(1 << 20)}`]);
    backends.push(be);
    const r = await vmm(`test=hostile-scsi kind=${kind} at=${at}`, [`vhost-scsi,id=vs0,socket=${be.socket},ioeventfd=${io}`]);
    expectPass(r, 'hostile-scsi');
    expect(r.out).toContain(`hostile dev=scsi kind=${kind} at=${at} needs_reset=1 config_irq=1`);
    expect(r.out).toContain('hostile dev=scsi recovered=1');
    expect(be.err()).toMatch(reason);
    expect(r.err).toMatch(/vs0: the vhost-user back-end reported an error on queue \d+; the device needs reset/);
    expect(be.err() + r.err).not.toMatch(/internal error|terminate called|Unhandled|kvm-native: exception/);
    const s = await be.stats();
    expect(s.connections).toBe(2); // the reset reconnected; the back-end stayed up
  });
});
