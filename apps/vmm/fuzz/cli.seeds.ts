// Seed inputs for cli.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm cli`).
const args = (...a: string[]) => Buffer.from(a.join('\n'), 'latin1');
const withJson = (a: string[], json: unknown) => Buffer.concat([args(...a), Buffer.from('\x01'), Buffer.from(JSON.stringify(json), 'latin1')]);

export function seeds(): Record<string, Uint8Array> {
  return {
    'run-blk': args('run', '--kernel', 'k.elf', '--memory', '512M', '--cpus', '2', '--device', 'virtio-blk,id=d0,file=disk.img,num-queues=4,aio=threads,serial=SER,,IAL'),
    'net-scsi': args('--kernel=bz', '--cmdline', 'console=ttyS0', '--device', 'virtio-net,tap=tap0,mac=52:54:00:12:34:56,queues=2', '--device', 'virtio-scsi,id=s0', '--device', 'scsi-hd,bus=s0,lun=3,file=x.img,aio=io_uring,logical-block-size=4096'),
    monitor: args('-S', '--kernel', 'k', '--serial', 'file:/tmp/x', '--monitor', 'stdio', '--qmp', 'unix:/tmp/q.sock', '--trace-boot', '--incoming', 'unix:/tmp/m.sock'),
    config: withJson(['--config', 'f.json', '--cpus', '4'], { kernel: 'k.elf', memory: '1G', cpus: 2, serial: 'none', qmp: 'unix:/tmp/q', devices: ['virtio-blk,file=a.img', { type: 'vhost-scsi', id: 'v0', backend: 'user', socket: '/tmp/v.sock' }] }),
    plugins: args('plugins', '--json'),
    'every-setting': withJson(['run', '--config', 'f.json', '--paused=no', '--trace-boot=yes'], {
      kernel: 'k', initrd: 'i', cmdline: '--help', memory: 512, cpus: '2', serial: 'file:/tmp/s', qmp: ['unix:/tmp/a', 'unix:/tmp/b'], monitor: 'none',
      paused: 'on', 'trace-boot': true, incoming: 'unix:/tmp/m', restore: 'f', devices: [{ type: 'virtio-blk-pci', file: 'a', 'num-queues': 99 }],
    }),
    'syntax-error': Buffer.from('run\n--config\nf.json\x01{\n  "kernel": "k",\n  "devices": [1 2]\n}', 'latin1'),
    'device-help': args('run', '--device', 'virtio-scsi-pci,help', '--cmdline', '--help'),
    'run-with': args('--kernel', 'k', '--qmp', 'unix:/tmp/q.sock,mode=0660', '--run-with', 'user=nobody,chroot=/srv/vm', '--run-with=user=65534:65534'),
    log: args('--kernel', 'k', '--log-level', 'debug', '--log-file=/tmp/vmm.log', '--log-format', 'json', '--metrics', 'file:/tmp/vmm.prom,interval=2'),
  };
}
