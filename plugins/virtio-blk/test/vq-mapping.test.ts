// iothread-vq-mapping through the real `vmm` binary: num-queues=2 over two iothreads, the guest
// kit's blk-mq test (a write and a read-verify on each queue), then held so the monitor can
// show what each worker did with its own queue.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { qmpConnect, startVmm, waitGuestHolding } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-vqmap-guest-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Status = Record<string, unknown>;

describeKvm('virtio-blk iothread-vq-mapping driven by the guest kit', () => {
  it("num-queues=2 on io0 and io1: each worker reads its own queue's kicks and completes its requests; a snapshot restores both", async () => {
    const img = path.join(tmp, 'mq.img');
    fs.writeFileSync(img, Buffer.alloc(512 * 512));
    const snap = path.join(tmp, 'mq.snap');
    const args = [
      '--cmdline',
      'test=blk-mq hold=1',
      '--object',
      'iothread,id=io0',
      '--object',
      'iothread,id=io1',
      '--device',
      `virtio-blk,id=d0,file=${img},num-queues=2,iothread-vq-mapping=io0;io1`,
    ];
    const vm = startVmm(tmp, args);
    let restored: ReturnType<typeof startVmm> | undefined;
    try {
      await waitGuestHolding(vm, 'blk-mq on two iothreads');
      const qmp = await qmpConnect(vm);
      // Two worker threads, each with its queue.
      expect(vm.err()).toMatch(/iothread io0: worker thread started/);
      expect(vm.err()).toMatch(/iothread io1: worker thread started/);
      expect(vm.err()).toMatch(/d0: queue 0 on iothread io0/);
      expect(vm.err()).toMatch(/d0: queue 1 on iothread io1/);
      for (const q of [0, 1]) {
        const guestIrqs = Number(new RegExp(`blk-mq queue=${q} ok interrupts=(\\d+)`).exec(vm.out())![1]);
        const s = (await qmp.run('x-query-virtio-queue-status', { path: 'd0', queue: q })) as Status;
        expect(s['data-plane']).toBe(`iothread io${q}`);
        // blk-mq: one write and one read on the queue, both completed.
        expect(s).toMatchObject({ chains: 2, 'used-idx': 2, 'last-avail-idx': 2, 'avail-idx': 2, 'kicks-exit': 0 });
        // Every guest kick of the queue was read by its own worker from the queue's ioeventfd.
        expect(s['kicks-iothread'] as number).toBeGreaterThan(0);
        expect(s['kicks-iothread']).toBe(s['kicks-eventfd']);
        // Each interrupt the guest took on the queue's vector was sent by that worker.
        expect(guestIrqs).toBeGreaterThan(0);
        expect(s['interrupts-injected']).toBe(guestIrqs);
      }
      // The device's counters are both workers' together (each reports its own within 100 ms).
      let info: Status = {};
      for (let i = 0; i < 100; i++) {
        info = ((await qmp.run('x-query-virtio-status', { path: 'd0' })) as { 'device-info': Status })['device-info'];
        if (info.writes === 2 && info.reads === 2) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(info).toMatchObject({ iothread: 'io0,io1', writes: 2, reads: 2, 'in-flight': 0 });

      // A snapshot drains both workers and takes each queue's indices from its own; a new process
      // restores each worker with them (nothing pushed twice: the rings stand where the guest left them).
      await qmp.run('stop');
      await qmp.run('x-snapshot-save', { file: snap });
      qmp.close();
      vm.proc.kill('SIGKILL');
      await vm.exited;
      restored = startVmm(tmp, [...args, '--restore', snap]);
      const rq = await qmpConnect(restored);
      for (const q of [0, 1]) {
        // The first query already shows the restored indices (in shared memory before the workers load them).
        const s = (await rq.run('x-query-virtio-queue-status', { path: 'd0', queue: q })) as Status;
        expect(s).toMatchObject({ 'data-plane': `iothread io${q}`, 'used-idx': 2, 'last-avail-idx': 2, 'avail-idx': 2 });
      }
      expect(restored.err()).toMatch(/d0: queue 1 on iothread io1/);
      rq.close();
    } finally {
      for (const p of [vm, restored]) {
        if (!p) continue;
        p.proc.kill('SIGKILL');
        await p.exited;
      }
    }
  }, 120_000);
});
