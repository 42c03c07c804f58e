// The lost-kick diagnosis through vhost: the guest's kicks go to the back-end's kick eventfd, so
// the back-end's own counter is what moves; DeviceEvent kick writes that eventfd. And what
// happens when the back-end process dies under a running guest.
import * as fs from 'fs';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { Backend, image, Proc, Qmp, requireBuilt, startBackend, tmp, until, vmmWithQmp } from './harness';

type QueueStatus = Record<string, unknown> & { vhost: Record<string, unknown> };

describeKvm('vhost-scsi through the monitor: DeviceEvent, fault injection and a dying back-end', () => {
  let be: Backend;
  let vm: (Proc & { qmp: Qmp }) | undefined;
  beforeAll(requireBuilt);
  afterEach(async () => {
    vm?.qmp.close();
    if (vm && vm.proc.exitCode === null) vm.proc.kill('SIGKILL');
    await vm?.exited;
    vm = undefined;
    await be.stop();
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const queue = (q: number) =>
    vm!.qmp.run('x-query-virtio-queue-status', { path: '/machine/peripheral/vs0', queue: q }) as Promise<QueueStatus>;

  it('seed scenario: a kick dropped before the back-end leaves its kick counter at N; x-debug-device-event kick makes it N+1 and the request completes', async () => {
    const disk = image(1 << 20);
    be = await startBackend([`0:file=${disk},serial=SEED`]);
    vm = await vmmWithQmp('test=scsi-scan timeout-ms=60000', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    await vm.qmp.run('x-debug-virtqueue-drop', { dev: 'vs0', queue: 2, kicks: 1 });
    await vm.qmp.run('cont');
    // The first command is available in the ring, its kick was dropped by the VMM standing in for the back-end.
    const hung = await until(
      () => queue(2),
      (s) => s['kicks-dropped'] === 1 && s['avail-idx'] === 1,
      'the dropped kick',
    );
    expect(hung['pending-drop-kicks']).toBe(0);
    const n = (await be.stats()).rings[2].kicks;
    expect((await be.stats()).rings[2]['last-avail-idx']).toBe(0); // the back-end never saw the request
    // With the drop spent the back-end owns the notifier again.
    const owned = await until(
      () => queue(2),
      (s) => s.vhost.notifier === 'backend',
      'the notifier back at the back-end',
    );
    expect(owned.vhost).toMatchObject({ backend: 'user', started: true, 'vring-base': 0 });
    expect(typeof owned.vhost['kick-fd']).toBe('number');
    expect(typeof owned.vhost['call-fd']).toBe('number');
    await vm.qmp.run('x-debug-device-event', { dev: 'vs0', event: 'kick', queue: 2 });
    const after = await until(
      () => be.stats(),
      (s) => s.rings[2].kicks >= n + 1,
      'the back-end to count the kick',
    );
    expect(after.rings[2].kicks).toBe(n + 1);
    expect(await vm.exited).toBe(0);
    expect(vm.out()).toContain('guest-kit: PASS test=scsi-scan');
    expect(vm.err()).toContain('x-debug-device-event: kick on device vs0 queue 2');
  });

  it("x-debug-device-event call raises the queue's MSI-X vector, the call path the guest sees", async () => {
    const disk = image(1 << 20);
    be = await startBackend([`0:file=${disk}`]);
    vm = await vmmWithQmp('test=scsi-scan timeout-ms=60000', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    await vm.qmp.run('x-debug-virtqueue-drop', { dev: 'vs0', queue: 2, kicks: 1 });
    await vm.qmp.run('cont');
    await until(
      () => queue(2),
      (s) => s['kicks-dropped'] === 1,
      'the guest to reach its first command',
    );
    const before = await queue(2);
    expect(before['vector-masked']).toBe(false);
    await vm.qmp.run('x-debug-device-event', { dev: 'vs0', event: 'call', queue: 2 });
    const after = await queue(2);
    expect(after['debug-events']).toBe(1);
    expect(after['interrupts-injected']).toBe((before['interrupts-injected'] as number) + 1);
    expect(after['vector-pending']).toBe(false); // delivered, not pended
    await vm.qmp.run('x-debug-device-event', { dev: 'vs0', event: 'kick', queue: 2 });
    expect(await vm.exited).toBe(0);
  });

  it('the back-end killed mid-run: the VMM reports it, the adapter goes needs-reset, QMP keeps answering; a restarted back-end is reattached by system_reset', async () => {
    const disk = image(1 << 20);
    be = await startBackend([`0:file=${disk},serial=KILL`]);
    vm = await vmmWithQmp('test=scsi-scan timeout-ms=60000', [`vhost-scsi,id=vs0,socket=${be.socket}`]);
    await vm.qmp.run('x-debug-virtqueue-drop', { dev: 'vs0', queue: 2, kicks: 1 });
    await vm.qmp.run('cont');
    await until(
      () => queue(2),
      (s) => s['kicks-dropped'] === 1 && (s.vhost as Record<string, unknown>).started === true,
      'a request waiting in the ring',
    );
    be.proc.kill('SIGKILL');
    await be.exited;
    const status = await until(
      () => vm!.qmp.run('x-query-virtio-status', { path: '/machine/peripheral/vs0' }) as Promise<Record<string, unknown>>,
      (s) => (s['status-bits'] as string[]).includes('NEEDS_RESET'),
      'needs-reset',
    );
    expect(status.broken).toBe(true);
    expect(String(status['broken-reason'])).toMatch(/vhost-user back-end at .* went away/);
    expect(vm.err()).toMatch(/vs0: the vhost-user back-end at .* went away \(the connection closed\); the device needs reset/);
    expect(await vm.qmp.run('query-status')).toMatchObject({ running: true });
    expect((await queue(2)).vhost).toMatchObject({ started: false, notifier: 'own' });
    // A new back-end on the same socket; the guest starts over and the device reconnects at DRIVER_OK.
    be = await startBackend([`0:file=${disk},serial=KILL`], [], be.socket);
    await vm.qmp.run('system_reset');
    expect(await vm.exited).toBe(0);
    expect(vm.out()).toContain('guest-kit: PASS test=scsi-scan');
    expect(vm.err()).toMatch(/vs0: reconnected to the vhost-user back-end/);
    expect((await be.stats()).rings[2].kicks).toBeGreaterThan(0);
  });
});
