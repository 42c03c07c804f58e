// VirtioNetDevice with a fake guest memory and a real TAP whose far side is a
// network namespace's kernel stack: ARP and ICMP replies come from Linux itself.
import { execFileSync } from 'child_process';
import { IoThreadChannel, SharedQueueStats, virtioUapi as V, WorkerPlane } from '@tsvmm/virtio-core';
import { driverInit, fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { Tap } from './backend/tap';
import { createNetPlane, NET_PLANE, NetInit } from './dataplane';
import { VirtioNetDevice } from './device';
import * as N from './generated/virtio-net-uapi';

const canNetns = (() => {
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

const HOST_IP = [10, 99, 0, 1];
const GUEST_IP = [10, 99, 0, 2];
const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

function csum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (b[i + 1] ?? 0);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

function arpRequest(): Uint8Array {
  const f = new Uint8Array(12 + 42); // vnet header + Ethernet + ARP
  const e = f.subarray(12);
  e.fill(0xff, 0, 6);
  e.set(GUEST_MAC, 6);
  e.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
  e.set(GUEST_MAC, 22);
  e.set(GUEST_IP, 28);
  e.set(HOST_IP, 38);
  return f;
}

function icmpEcho(hostMac: Uint8Array, seq: number): Uint8Array {
  const payload = Buffer.from('tsvmm-ping-payload');
  const f = new Uint8Array(12 + 14 + 20 + 8 + payload.length);
  const e = f.subarray(12);
  e.set(hostMac, 0);
  e.set(GUEST_MAC, 6);
  e.set([0x08, 0x00], 12);
  const ip = e.subarray(14, 34);
  ip.set([0x45, 0, 0, 20 + 8 + payload.length, 0, 1, 0x40, 0, 64, 1, 0, 0, ...GUEST_IP, ...HOST_IP]);
  const c = csum(ip);
  ip[10] = c >> 8;
  ip[11] = c & 0xff;
  const icmp = e.subarray(34);
  icmp.set([8, 0, 0, 0, 0x12, 0x34, seq >> 8, seq & 0xff]);
  icmp.set(payload, 8);
  const ic = csum(icmp);
  icmp[2] = ic >> 8;
  icmp[3] = ic & 0xff;
  return f;
}

(canNetns || process.env.VMM_REQUIRE_KVM === '1' ? describe : describe.skip)('VirtioNetDevice on a real TAP', () => {
  const ns = `vmmnet${process.pid}`;
  const ifname = `vmmt${process.pid % 100000}`;
  let tap: Tap;
  const ipns = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, 'ip', ...args]);

  beforeAll(() => {
    execFileSync('ip', ['netns', 'add', ns]);
    tap = new Tap({ name: ifname, queues: 1 }); // created in this namespace, attached to our fd
    execFileSync('ip', ['link', 'set', ifname, 'netns', ns]); // the fd stays attached
    // No IPv6 chatter (router and neighbour solicitations): the batch tests count every frame.
    for (const c of ['all', 'default', ifname])
      execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${c}.disable_ipv6=1`]);
    ipns('addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', ifname);
    ipns('link', 'set', ifname, 'up');
    // The host sends to the guest without asking ARP first.
    ipns(
      'neigh',
      'replace',
      GUEST_IP.join('.'),
      'lladdr',
      GUEST_MAC.map((b) => b.toString(16).padStart(2, '0')).join(':'),
      'dev',
      ifname,
      'nud',
      'permanent',
    );
  });

  afterAll(() => {
    tap?.close();
    execFileSync('ip', ['netns', 'del', ns]);
  });

  it('sends the guest ARP request and ICMP echo to the host kernel and receives its replies', async () => {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id: 'n0', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    const irqs: number[] = [];
    dev.interrupt = { signalQueue: (q) => irqs.push(q), signalConfig: () => undefined };
    const rx = new MockDriverQueue(mem, 16, 0x1000);
    const tx = new MockDriverQueue(mem, 16, 0x8000);
    const ctrl = new MockDriverQueue(mem, 16, 0xf000);
    dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    rx.program(dev.queues[0]);
    tx.program(dev.queues[1]);
    ctrl.program(dev.queues[2]);
    dev.writeStatus(0x0f);
    expect(dev.readConfig(N.OFF_virtio_net_config_status, 2)).toBe(N.VIRTIO_NET_S_LINK_UP);

    for (let i = 0; i < 8; i++) rx.addChain([{ addr: 0x40000 + i * 0x1000, len: 2048, write: true }]);
    dev.notify(0);

    const waitRx = async (pred: (frame: Uint8Array) => boolean): Promise<Uint8Array> => {
      const deadline = Date.now() + 5000;
      for (;;) {
        for (const u of rx.takeUsed()) {
          const f = mem.read(0x40000 + u.id * 0x1000, u.len);
          if (pred(f.subarray(12))) return f;
        }
        if (Date.now() > deadline) throw new Error('no matching frame from the host');
        await new Promise((r) => setTimeout(r, 10));
      }
    };

    mem.write(0x80000, arpRequest());
    tx.addChain([{ addr: 0x80000, len: 12 + 42 }]);
    dev.notify(1);
    expect(tx.takeUsed()).toEqual([{ id: 0, len: 0 }]);
    const arp = await waitRx((e) => e[12] === 0x08 && e[13] === 0x06 && e[21] === 2);
    expect(new DataView(arp.buffer).getUint16(10, true)).toBe(1); // num_buffers
    const e = arp.subarray(12);
    expect([...e.subarray(28, 32)]).toEqual(HOST_IP); // sender: the host side
    expect([...e.subarray(0, 6)]).toEqual(GUEST_MAC);
    const hostMac = e.slice(22, 28);

    mem.write(0x81000, icmpEcho(hostMac, 7));
    tx.addChain([{ addr: 0x81000, len: 12 + 14 + 20 + 8 + 18 }]);
    dev.notify(1);
    const reply = await waitRx((f) => f[12] === 0x08 && f[13] === 0x00 && f[23] === 1 && f[34] === 0);
    const r = reply.subarray(12);
    expect([...r.subarray(26, 30)]).toEqual(HOST_IP);
    expect((r[40] << 8) | r[41]).toBe(7); // our sequence number came back
    expect(Buffer.from(r.subarray(42, 60)).toString()).toBe('tsvmm-ping-payload');
    expect(dev.net.txPackets).toBe(2);
    expect(dev.net.rxPackets).toBeGreaterThanOrEqual(2);
    expect(irqs).toContain(0);
    expect(irqs).toContain(1);

    // Control queue: MQ pairs beyond the device's count is refused; RX mode is accepted.
    mem.write(0x90000, [N.VIRTIO_NET_CTRL_RX, N.VIRTIO_NET_CTRL_RX_PROMISC, 0]);
    ctrl.addChain([
      { addr: 0x90000, len: 3 },
      { addr: 0x90100, len: 1, write: true },
    ]);
    dev.notify(2);
    expect(mem.readU8(0x90100)).toBe(N.VIRTIO_NET_OK);
    expect(dev.rxMode.promisc).toBe(false);
    dev.reset();
  });

  it('stops reading the TAP while the guest has no receive buffers and resumes on its kick', async () => {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id: 'n1', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    const rx = new MockDriverQueue(mem, 16, 0x1000);
    const tx = new MockDriverQueue(mem, 16, 0x8000);
    dev.writeStatus(3);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    rx.program(dev.queues[0]);
    tx.program(dev.queues[1]);
    dev.writeStatus(0x0f);
    dev.notify(0); // no buffers yet
    expect(dev.net.rxNoBuffers).toBeGreaterThanOrEqual(1);
    // The host answers while the guest has no buffers: the frames wait in the TAP.
    mem.write(0x80000, arpRequest());
    tx.addChain([{ addr: 0x80000, len: 54 }]);
    dev.notify(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(rx.takeUsed()).toEqual([]);
    // The reply waited in the TAP; so may other frames the host kernel sent
    // meanwhile (IPv6 router/neighbour solicitations on a fresh link): give
    // several buffers and look for the ARP reply among what arrives.
    for (let i = 0; i < 8; i++) rx.addChain([{ addr: 0x40000 + i * 0x1000, len: 2048, write: true }]);
    dev.notify(0);
    const take = () => rx.takeUsed().map((u) => mem.read(0x40000 + u.id * 0x1000, u.len));
    const frames = take();
    expect(frames.length).toBeGreaterThanOrEqual(1); // the kick resumed reading the TAP at once
    const isArpReply = (f: Uint8Array) => f[12 + 12] === 0x08 && f[12 + 13] === 0x06 && f[12 + 21] === 2;
    for (const deadline = Date.now() + 2000; !frames.some(isArpReply) && Date.now() < deadline;) {
      await new Promise((r) => setTimeout(r, 10));
      frames.push(...take());
    }
    expect(frames.some(isArpReply)).toBe(true);
    dev.reset();
  });

  it('control queue with EVENT_IDX: avail_event follows every command, so the driver kicks for each one', () => {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id: 'n3', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    const ctrl = new MockDriverQueue(mem, 16, 0xf000);
    dev.writeStatus(3);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    ctrl.program(dev.queues[2]);
    dev.writeStatus(0x0f);
    expect(dev.hasFeature(V.VIRTIO_RING_F_EVENT_IDX)).toBe(true);
    // Like Linux's virtnet_send_command: one request at a time, kick only when vring_need_event says so, wait for it.
    for (let i = 0; i < 4; i++) {
      const req = 0x90000 + i * 0x100;
      mem.write(req, [N.VIRTIO_NET_CTRL_RX, N.VIRTIO_NET_CTRL_RX_ALLMULTI, i & 1]);
      ctrl.addChain([
        { addr: req, len: 3 },
        { addr: req + 0x80, len: 1, write: true },
      ]);
      const [oldIdx, newIdx, event] = [i, i + 1, ctrl.availEvent()];
      expect(((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff)).toBe(true); // the driver kicks
      dev.notify(2);
      expect(ctrl.takeUsed()).toEqual([{ id: (2 * i) % 16, len: 1 }]);
      expect(mem.readU8(req + 0x80)).toBe(N.VIRTIO_NET_OK);
      expect(dev.rxMode.allmulti).toBe((i & 1) === 1);
    }
    dev.reset();
  });

  it('migration extra state: the MAC and RX mode the control queue set travel, and load into a new device; hostile states are refused whole', () => {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id: 'n4', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    const ctrl = new MockDriverQueue(mem, 16, 0xf000);
    dev.writeStatus(3);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    ctrl.program(dev.queues[2]);
    dev.writeStatus(0x0f);
    const commands: number[][] = [
      [N.VIRTIO_NET_CTRL_MAC, N.VIRTIO_NET_CTRL_MAC_ADDR_SET, 0x52, 0x54, 0, 0xab, 0xcd, 0xef],
      [N.VIRTIO_NET_CTRL_RX, N.VIRTIO_NET_CTRL_RX_PROMISC, 0],
      [N.VIRTIO_NET_CTRL_RX, N.VIRTIO_NET_CTRL_RX_NOBCAST, 1],
    ];
    commands.forEach((c, i) => {
      const req = 0x90000 + i * 0x100;
      mem.write(req, c);
      ctrl.addChain([
        { addr: req, len: c.length },
        { addr: req + 0x80, len: 1, write: true },
      ]);
    });
    dev.notify(2);
    expect(ctrl.takeUsed()).toHaveLength(3);
    const saved = JSON.parse(JSON.stringify(dev.saveNetState()));
    expect(saved).toMatchObject({ activePairs: 1, mac: '52:54:00:ab:cd:ef', rxMode: { promisc: false, nobcast: true } });
    const other = new VirtioNetDevice(fakeMemory(1 << 20), { id: 'n5', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    other.loadNetState(saved);
    expect(other.deviceInfo()).toMatchObject({ mac: '52:54:00:ab:cd:ef', 'rx-mode': { promisc: false, nobcast: true } });
    expect(other.readConfig(N.OFF_virtio_net_config_mac + 3, 1)).toBe(0xab);
    for (const bad of [{ activePairs: 2 }, { mac: '52:54:00:ab:cd' }, { rxMode: { promisc: 'yes' } }, null])
      expect(() => other.checkNetState(bad)).toThrow(/activePairs|mac|promisc|object/);
    dev.reset();
  });

  it('on an iothread: the plane (over a duplicate of the TAP) carries ARP both ways and writes the irqfds, takes the MAC the driver sets, reads nothing from the TAP while the VM is stopped; the main thread shows its MAC and counters', async () => {
    const mem = fakeMemory(1 << 20);
    const main = new VirtioNetDevice(mem, { id: 'n6', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    const irqs: string[] = [];
    main.interrupt = { signalQueue: (q) => irqs.push(`main-q${q}`), signalConfig: () => irqs.push('config') };
    const stats = SharedQueueStats.create(main.queues.length);
    let plane: WorkerPlane<VirtioNetDevice> | undefined;
    const later = (f: () => void) => setImmediate(f);
    // Messages go through a structured clone on a later turn, as between threads.
    const thread = new IoThreadChannel(
      'iotnet0',
      (m) => main.onDataPlaneMessage(m),
      (deliver) => {
        const init: NetInit = {
          type: 'init',
          plane: NET_PLANE,
          id: 'n6',
          regions: [],
          eventIdx: true,
          stats: stats.buffer,
          tap: { name: tap.name, fds: tap.dupFds() },
          mac: GUEST_MAC,
          pairs: 1,
          mtu: 1500,
        };
        plane = createNetPlane(
          mem,
          init,
          (m) => later(() => deliver(structuredClone(m))),
          () => irqs.push('worker-irq'),
        ) as WorkerPlane<VirtioNetDevice>;
        return { postMessage: (m) => later(() => plane!.handle(structuredClone(m))), close: async () => undefined };
      },
    );
    main.attachDataPlane({ thread, vectorFd: () => 7, stats });
    const settle = () => new Promise((r) => setTimeout(r, 30));
    const rx = new MockDriverQueue(mem, 16, 0x1000);
    const tx = new MockDriverQueue(mem, 16, 0x8000);
    const ctrl = new MockDriverQueue(mem, 16, 0xf000);
    driverInit(main, [rx, tx, ctrl]);
    await settle();
    for (let i = 0; i < 8; i++) rx.addChain([{ addr: 0x40000 + i * 0x1000, len: 2048, write: true }]);
    main.notify(0, 'ioeventfd');
    const frames: Uint8Array[] = [];
    const waitRx = async (pred: (e: Uint8Array) => boolean): Promise<Uint8Array> => {
      for (const deadline = Date.now() + 5000; ; await settle()) {
        for (const u of rx.takeUsed()) frames.push(mem.read(0x40000 + u.id * 0x1000, u.len).subarray(12));
        const f = frames.find(pred);
        if (f) return f;
        if (Date.now() > deadline) throw new Error('no matching frame from the host');
      }
    };
    mem.write(0x80000, arpRequest());
    tx.addChain([{ addr: 0x80000, len: 12 + 42 }]);
    main.notify(1, 'ioeventfd');
    const arp = await waitRx((e) => e[12] === 0x08 && e[13] === 0x06 && e[21] === 2);
    expect([...arp.subarray(28, 32)]).toEqual(HOST_IP);
    expect(tx.takeUsed()).toEqual([{ id: 0, len: 0 }]);
    // The worker wrote the irqfds; the main thread routed none.
    expect(irqs).toContain('worker-irq');
    expect(irqs.filter((i) => i.startsWith('main'))).toEqual([]);
    // MAC_ADDR_SET on the plane: config space on the main thread follows (from the plane's report).
    mem.write(0x90000, [N.VIRTIO_NET_CTRL_MAC, N.VIRTIO_NET_CTRL_MAC_ADDR_SET, 0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    ctrl.addChain([
      { addr: 0x90000, len: 8 },
      { addr: 0x90100, len: 1, write: true },
    ]);
    main.notify(2, 'ioeventfd');
    await settle();
    expect(mem.readU8(0x90100)).toBe(N.VIRTIO_NET_OK);
    thread.send({ type: 'stats' });
    await settle();
    expect(main.readConfig(N.OFF_virtio_net_config_mac + 3, 1)).toBe(0xab);
    expect(main.deviceInfo()).toMatchObject({ iothread: 'iotnet0', mac: '52:54:00:ab:cd:ef', txPackets: 1 });
    expect(main.queueInfo(1)).toMatchObject({ 'data-plane': 'iothread iotnet0', 'used-idx': 1 });
    // The VM stops: a frame the host sends waits in the TAP until it runs again.
    main.setVmRunning(false);
    await settle();
    const before = rx.takeUsed().length + frames.length;
    // A UDP datagram from the host to the guest (the neighbour entry is permanent: no ARP first).
    execFileSync('ip', [
      'netns',
      'exec',
      ns,
      'python3',
      '-c',
      `import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"stopped", ("${GUEST_IP.join('.')}", 5556))`,
    ]);
    await settle();
    expect(rx.takeUsed()).toEqual([]);
    main.setVmRunning(true);
    const udp = await waitRx((e) => e[12] === 0x08 && e[13] === 0x00 && e[23] === 17 && ((e[36] << 8) | e[37]) === 5556);
    expect(Buffer.from(udp.subarray(42, 49)).toString()).toBe('stopped');
    expect(frames.length).toBeGreaterThan(before);
    main.reset();
    await settle();
    await thread.close();
  });

  it('marks the device needs-reset for a transmit chain with device-writable buffers', () => {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id: 'n2', tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    const tx = new MockDriverQueue(mem, 16, 0x8000);
    dev.writeStatus(3);
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    tx.program(dev.queues[1]);
    dev.writeStatus(0x0f);
    tx.addChain([{ addr: 0x80000, len: 54, write: true }]);
    dev.notify(1);
    expect(dev.broken).toBe(true);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    dev.reset();
  });
  // --- batching: frames move between the TAP and the rings a batch at a time ---

  /** A device with rx0/tx0 of 64 entries, DRIVER_OK; `mrg` false: the driver does not accept MRG_RXBUF. */
  function up(id: string, mrg = true) {
    const mem = fakeMemory(1 << 20);
    const dev = new VirtioNetDevice(mem, { id, tap, mac: Uint8Array.from(GUEST_MAC), pairs: 1, mtu: 1500 });
    const irqs: number[] = [];
    dev.interrupt = { signalQueue: (q) => irqs.push(q), signalConfig: () => undefined };
    const rx = new MockDriverQueue(mem, 64, 0x1000);
    const tx = new MockDriverQueue(mem, 64, 0x8000);
    dev.writeStatus(3);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0) & ~(mrg ? 0 : 1 << N.VIRTIO_NET_F_MRG_RXBUF));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.writeStatus(0x0b);
    rx.program(dev.queues[0]);
    tx.program(dev.queues[1]);
    dev.writeStatus(0x0f);
    expect(dev.hasFeature(N.VIRTIO_NET_F_MRG_RXBUF)).toBe(mrg);
    dev.notify(0); // no receive buffers yet: RX stops reading the TAP, frames wait in its queue
    return { mem, dev, irqs, rx, tx };
  }

  /** UDP datagrams from the host kernel to the guest (port 7777), payload i of sizes[i] bytes of (i * 7 + j) & 0xff; queued on the TAP when this returns. */
  function hostSends(sizes: number[]): void {
    const py = `import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, n in enumerate(int(x) for x in sys.argv[1:]):
    s.sendto(bytes(((i * 7 + j) & 0xff) for j in range(n)), ("${GUEST_IP.join('.')}", 7777))`;
    execFileSync('ip', ['netns', 'exec', ns, 'python3', '-c', py, ...sizes.map(String)]);
  }
  const payloadOf = (i: number, n: number) => Array.from({ length: n }, (_, j) => (i * 7 + j) & 0xff);
  const ETH_IP_UDP = 14 + 20 + 8;
  const tapStat = (name: string) =>
    Number(execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${ifname}/statistics/${name}`]).toString());

  it('a burst of frames waiting on the TAP is received in one pass: one used entry per frame, in order, exact lengths, one interrupt', () => {
    const { mem, dev, irqs, rx } = up('n4');
    const sizes = Array.from({ length: 20 }, (_, i) => 10 + 37 * i);
    hostSends(sizes);
    for (let i = 0; i < 32; i++) rx.addChain([{ addr: 0x40000 + i * 0x800, len: 0x800, write: true }]);
    irqs.length = 0;
    dev.notify(0);
    const used = rx.takeUsed();
    expect(used).toEqual(sizes.map((n, i) => ({ id: i, len: 12 + ETH_IP_UDP + n })));
    for (const [i, n] of sizes.entries()) {
      const f = mem.read(0x40000 + i * 0x800, 12 + ETH_IP_UDP + n);
      expect(new DataView(f.buffer).getUint16(N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, true)).toBe(1);
      expect([...f.subarray(12 + ETH_IP_UDP)]).toEqual(payloadOf(i, n));
    }
    expect(irqs).toEqual([0]);
    expect(dev.counters[0].interrupts + dev.counters[0].suppressed).toBe(1);
    // The 12 chains no frame needed stay with the device, not used and not counted.
    expect(dev.queues[0].lastAvailIdx).toBe(20);
    expect(dev.counters[0].chains).toBe(20);
    expect(dev.net).toMatchObject({ rxPackets: 20, rxDropped: 0 });
    dev.reset();
  });

  it('MRG_RXBUF: a frame longer than a chain goes on into the next chains (num_buffers), and the frame after it follows in the same pass', () => {
    const { mem, dev, irqs, rx } = up('n5');
    hostSends([1000, 100]);
    for (let i = 0; i < 16; i++) rx.addChain([{ addr: 0x40000 + i * 0x100, len: 0x100, write: true }]);
    irqs.length = 0;
    dev.notify(0);
    const big = 12 + ETH_IP_UDP + 1000;
    expect(rx.takeUsed()).toEqual([
      { id: 0, len: 256 },
      { id: 1, len: 256 },
      { id: 2, len: 256 },
      { id: 3, len: 256 },
      { id: 4, len: big - 1024 },
      { id: 5, len: 12 + ETH_IP_UDP + 100 },
    ]);
    const f = mem.read(0x40000, big); // the five chains are contiguous here
    expect(new DataView(f.buffer).getUint16(N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, true)).toBe(5);
    expect([...f.subarray(12 + ETH_IP_UDP)]).toEqual(payloadOf(0, 1000));
    const g = mem.read(0x40500, 12 + ETH_IP_UDP + 100);
    expect(new DataView(g.buffer).getUint16(N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, true)).toBe(1);
    expect([...g.subarray(12 + ETH_IP_UDP)]).toEqual(payloadOf(1, 100));
    expect(irqs).toEqual([0]);
    expect(dev.net).toMatchObject({ rxPackets: 2, rxDropped: 0 });
    dev.reset();
  });

  it('without MRG_RXBUF a frame longer than its chain is dropped (the chain comes back empty) and the next frame is received', () => {
    const { mem, dev, rx } = up('n6', false);
    hostSends([1000, 100]);
    for (let i = 0; i < 8; i++) rx.addChain([{ addr: 0x40000 + i * 0x100, len: 0x100, write: true }]);
    dev.notify(0);
    expect(rx.takeUsed()).toEqual([
      { id: 0, len: 0 },
      { id: 1, len: 12 + ETH_IP_UDP + 100 },
    ]);
    expect([...mem.read(0x40100 + 12 + ETH_IP_UDP, 100)]).toEqual(payloadOf(1, 100));
    expect(dev.net).toMatchObject({ rxPackets: 1, rxDropped: 1 });
    dev.reset();
  });

  it('a kick with 40 frames in the transmit ring: all reach the host in order of the ring, 40 used entries, one interrupt; a chain of 33 buffers in the middle goes alone', () => {
    const { mem, dev, irqs, tx } = up('n7');
    const before = tapStat('rx_packets');
    const arp = arpRequest();
    for (let i = 0; i < 40; i++) {
      mem.write(0x40000 + i * 0x100, arp);
      if (i === 20) {
        // 54 bytes in 33 buffers: more than a batch takes for one frame.
        const bufs = Array.from({ length: 33 }, (_, k) => ({ addr: 0x40000 + i * 0x100 + Math.min(k * 2, 53), len: k < 21 ? 2 : 1 }));
        expect(bufs.reduce((n, b) => n + b.len, 0)).toBe(54);
        let a = 0x40000 + i * 0x100;
        for (const b of bufs) {
          b.addr = a;
          a += b.len;
        }
        tx.addChain(bufs);
      } else tx.addChain([{ addr: 0x40000 + i * 0x100, len: arp.length }]);
    }
    irqs.length = 0;
    dev.notify(1);
    const used = tx.takeUsed();
    expect(used.map((u) => u.len)).toEqual(new Array(40).fill(0));
    expect(used.length).toBe(40);
    expect(irqs).toEqual([1]);
    // One interrupt decision for the kick (EVENT_IDX would hide a second one from `irqs`).
    expect(dev.counters[1].interrupts + dev.counters[1].suppressed).toBe(1);
    expect(dev.net).toMatchObject({ txPackets: 40, txBytes: 40 * 42, txDropped: 0 });
    expect(tapStat('rx_packets') - before).toBe(40);
    dev.reset();
  });

  it('a frame the TAP refuses (shorter than an Ethernet header: EINVAL) marks the device needs-reset; the frames before it were sent', () => {
    const { mem, dev, tx } = up('n8');
    const before = tapStat('rx_packets');
    mem.write(0x40000, arpRequest());
    for (let i = 0; i < 3; i++) tx.addChain([{ addr: 0x40000, len: 54 }]);
    tx.addChain([{ addr: 0x40000, len: 12 + 10 }]);
    tx.addChain([{ addr: 0x40000, len: 54 }]);
    dev.notify(1);
    expect(dev.broken).toBe(true);
    expect(dev.brokenReason).toMatch(/the TAP refused a transmit frame of 22 bytes \(EINVAL\)/);
    expect(dev.faultCounters.internalErrors).toBe(0);
    expect(dev.net.txPackets).toBe(3);
    expect(tapStat('rx_packets') - before).toBeGreaterThanOrEqual(3);
    dev.reset();
  });
});
