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
  };
}
