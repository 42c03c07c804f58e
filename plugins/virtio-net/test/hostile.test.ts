// The guest kit's hostile suite (tools/guest-kit/src/hostile.c) against virtio-net over a TAP in a
// network namespace: zero-length TX, RX and control-ack buffers at guest-physical 0 and outside RAM,
// with ioeventfd on and off.
import { execFileSync } from 'child_process';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass as expectPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

const NS = `vmmhb${process.pid}`;
const ns = (...args: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...args]);

describeKvm('virtio-net: hostile guest (hostile.c)', () => {
  beforeAll(() => {
    requireBuilt();
    execFileSync('ip', ['netns', 'add', NS]);
    ns('ip', 'link', 'set', 'lo', 'up');
    ns('ip', 'tuntap', 'add', 'tap0', 'mode', 'tap', 'vnet_hdr');
    ns('ip', 'addr', 'add', '10.0.2.2/24', 'dev', 'tap0');
    ns('ip', 'link', 'set', 'tap0', 'up');
  });
  afterAll(() => execFileSync('ip', ['netns', 'del', NS]));

  it.each([
    ['tx-zero', '0', 'on'],
    ['tx-zero', 'oob', 'off'],
    ['rx-zero', '0', 'on'],
    ['rx-zero', 'oob', 'off'],
    ['ctrl-zero', '0', 'on'],
    ['ctrl-zero', 'oob', 'on'],
    ['ctrl-zero', '0', 'off'],
  ])(
    '%s buffer at %s (ioeventfd=%s): the VMM stays up, the guest reads needs-reset, a reset brings the device back',
    async (kind, at, io) => {
      const r = await runGuestKit(`test=hostile-net kind=${kind} at=${at}`, [`virtio-net,id=n0,tap=tap0,ioeventfd=${io}`], {
        wrap: ['ip', 'netns', 'exec', NS],
        timeoutMs: 90_000,
      });
      expectPass(r, 'hostile-net');
      expect(r.out).toContain(`hostile dev=net kind=${kind} at=${at} needs_reset=1 config_irq=1`);
      // Recovery: reset, initialise, resolve the host's MAC over ARP.
      expect(r.out).toContain('hostile dev=net recovered=1');
      expect(r.out).toMatch(/net-arp reply mac=/);
      expect(r.err.match(/n0: guest error, device needs reset/g)).toHaveLength(1);
      expect(r.err).not.toMatch(/internal error|terminate called|Unhandled|kvm-native: exception/);
    },
  );
});
