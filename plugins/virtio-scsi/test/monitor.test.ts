// Diagnosing a lost kick and a lost interrupt on virtio-scsi from the monitor alone: the guest kit's
// scsi-scan waits for each command's completion interrupt, so a dropped kick or interrupt hangs it
// until x-debug-device-event delivers one. One boot: the kick side first, then the interrupt side.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, Proc, QmpClient, requireBuilt, startNode, VMM_BIN } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-scsi-views-'));
type Status = Record<string, unknown>;

describeKvm('virtio-scsi through the monitor: DeviceEvent, fault injection, queue status', () => {
  let vm: Proc | undefined;
  beforeAll(() => requireBuilt());
  afterAll(() => {
    if (vm && vm.proc.exitCode === null) vm.proc.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('a dropped kick and a dropped interrupt on req0 each hang the scan; kick and call recover it, counters move by one', async () => {
    const img = path.join(tmp, 'a.img');
    fs.writeFileSync(img, Buffer.alloc(1 << 20));
    const sock = path.join(tmp, 'qmp-views.sock');
    vm = startNode([
      VMM_BIN,
      'run',
      '-S',
      '--kernel',
      GUEST_ELF,
      '--memory',
      '64M',
      '--cmdline',
      'test=scsi-scan timeout-ms=60000',
      '--qmp',
      `unix:${sock}`,
      '--device',
      'virtio-scsi,id=s0',
      '--device',
      `scsi-hd,bus=s0,lun=0,file=${img},serial=VIEWS`,
    ]);
    const qmp = await QmpClient.connect(sock);
    await qmp.run('qmp_capabilities');
    const status = (q: number) => qmp.run('x-query-virtio-queue-status', { path: 's0', queue: q }) as Promise<Status>;
    const until = async (q: number, pred: (s: Status) => boolean, what: string): Promise<Status> => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const s = await status(q);
        if (pred(s)) return s;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last ${JSON.stringify(s)}\n${vm!.out()}\n${vm!.err()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const hmp = (line: string) => qmp.run('human-monitor-command', { 'command-line': line }) as Promise<string>;

    expect(await qmp.run('x-debug-virtqueue-drop', { dev: 's0', queue: 2, kicks: 1 })).toEqual({ 'drop-kicks': 1, 'drop-interrupts': 0 });
    await qmp.run('cont');
    // Kick side: the first command is in the ring, its kick was dropped.
    const hung = await until(2, (s) => s['kicks-dropped'] === 1 && s['avail-idx'] === 1, 'the dropped kick');
    expect(hung).toMatchObject({
      'last-avail-idx': 0,
      'used-idx': 0,
      chains: 0,
      'kicks-eventfd': 0,
      'kicks-exit': 0,
      'pending-drop-kicks': 0,
    });
    const req0 = (await hmp('info virtqueues s0')).split('\n').find((l) => l.startsWith('s0 ') && l.split(/\s+/)[2] === 'req0')!;
    expect(req0.split(/\s+/).slice(0, 9)).toEqual([
      's0',
      '2',
      'req0',
      String(hung.size),
      '1',
      '0',
      '0',
      '0',
      String(hung['interrupts-injected']),
    ]);

    // Interrupt side: the kick delivers the command, its completion interrupt is dropped.
    await qmp.run('x-debug-virtqueue-drop', { dev: 's0', queue: 2, interrupts: 1 });
    await qmp.run('x-debug-device-event', { dev: 's0', event: 'kick', queue: 2 });
    const silent = await until(2, (s) => s['interrupts-dropped'] === 1, 'the dropped interrupt');
    expect(silent).toMatchObject({
      'last-avail-idx': 1,
      'used-idx': 1,
      chains: 1,
      'debug-events': 1,
      'kicks-dropped': 1,
      'interrupts-injected': hung['interrupts-injected'],
      'vector-pending': false,
    });
    expect((silent['kicks-eventfd'] as number) + (silent['kicks-exit'] as number)).toBe(1);
    // Still waiting: nothing more reaches the ring while the guest waits for that interrupt.
    await new Promise((r) => setTimeout(r, 300));
    expect(await status(2)).toMatchObject({ 'avail-idx': 1, 'used-idx': 1 });

    await qmp.run('x-debug-device-event', { dev: 's0', event: 'call', queue: 2 });
    expect(await vm.exited).toBe(0);
    expect(vm.out()).toContain('guest-kit: PASS test=scsi-scan');
    expect(vm.err()).toContain('x-debug-device-event: kick on device s0 queue 2');
    expect(vm.err()).toContain('x-debug-device-event: call on device s0 queue 2');
    qmp.close();
  });
});
