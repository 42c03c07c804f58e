/** HMP: the human monitor's commands, as text, over the same operations as QMP. */
import { CommandError } from './commands';
import type { Monitor } from './monitor';
import {
  decodeFeatures,
  findVirtio,
  formatVirtqueues,
  queueElement,
  queueStatus,
  virtioDevices,
  virtioStatus,
  virtqueueRows,
} from './virtio-info';

export const HMP_HELP = `commands:
  info status                          run state
  info pci                             PCI devices, BARs, MSI-X
  info virtio                          virtio devices and their paths
  info virtqueues [DEV]                one line per queue: indices, kicks, interrupts, vector, ages, verdict
  info virtio-status DEV               features by name, status, broken, disabled, ISR
  info virtio-queue-status DEV QUEUE   indices, vector, kick and interrupt counters
  info virtio-queue-element DEV QUEUE [INDEX]   the descriptor chain at an avail ring position
  info migrate                         migration status and figures
  info iothreads                       iothreads: worker thread id, poll settings, devices
  info unclaimed                       guest accesses no device claimed, per hole
  stop | cont | system_reset | quit
  migrate URI                          live migration to a --incoming unix:PATH VMM
  savevm-file FILE                     x-snapshot-save (the VM stays stopped)
  migrate_set_downtime SECONDS         the downtime limit
  device_event DEV kick|call QUEUE     kick a queue's doorbell / inject its interrupt
  virtqueue_drop DEV QUEUE KICKS INTERRUPTS   drop the next N kicks / interrupts (fault injection)
  help`;

function kv(o: Record<string, unknown>): string {
  return Object.entries(o)
    .map(([k, v]) => `  ${k}: ${Array.isArray(v) ? v.join(' ') : v === null ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join('\n');
}

function int(s: string | undefined, what: string): number {
  if (s === undefined || !/^(0x[0-9a-f]+|\d+)$/i.test(s)) throw new CommandError(`${what}: expected a number, got '${s ?? ''}'`);
  return Number(s);
}

/** Runs one HMP command line and returns its output (errors are text too, as in QEMU). */
export async function runHmp(m: Monitor, line: string): Promise<string> {
  const words = line.trim().split(/\s+/).filter(Boolean);
  try {
    return await run(m, words);
  } catch (e) {
    if (e instanceof CommandError) return `Error: ${e.message}\n`;
    throw e;
  }
}

async function run(m: Monitor, w: string[]): Promise<string> {
  const [cmd, ...args] = w;
  switch (cmd) {
    case undefined:
      return '';
    case 'help':
    case '?':
      return `${HMP_HELP}\n`;
    case 'stop':
      await m.stop();
      return '';
    case 'cont':
    case 'c':
      m.cont();
      return '';
    case 'system_reset':
      await m.reset();
      return '';
    case 'quit':
    case 'q':
      setImmediate(() => void m.quit());
      return '';
    case 'device_event': {
      const [dev, event, q] = args;
      if (!dev || !event) throw new CommandError('usage: device_event DEV kick|call QUEUE');
      m.deviceEvent(dev, event, int(q, 'QUEUE'));
      return `${event} delivered to ${dev} queue ${q}\n`;
    }
    case 'virtqueue_drop': {
      const [dev, q, kicks, irqs] = args;
      const r = await m.commands
        .get('x-debug-virtqueue-drop')!
        .run({ dev, queue: int(q, 'QUEUE'), kicks: int(kicks ?? '0', 'KICKS'), interrupts: int(irqs ?? '0', 'INTERRUPTS') });
      return `${kv(r as Record<string, unknown>)}\n`;
    }
    case 'migrate':
    case 'savevm-file':
    case 'migrate_set_downtime': {
      if (!args[0]) throw new CommandError(`usage: ${cmd} ${cmd === 'migrate' ? 'URI' : cmd === 'savevm-file' ? 'FILE' : 'SECONDS'}`);
      const run = (name: string, a: Record<string, unknown>) => m.commands.get(name)!.run(a);
      if (cmd === 'migrate') await run('migrate', { uri: args[args.length - 1] });
      else if (cmd === 'savevm-file') await run('x-snapshot-save', { file: args[0] });
      else {
        const sec = Number(args[0]);
        if (!Number.isFinite(sec) || sec < 0) throw new CommandError(`SECONDS: expected a number, got '${args[0]}'`);
        await run('migrate-set-parameters', { 'downtime-limit': Math.round(sec * 1000) });
      }
      return '';
    }
    case 'info':
      if (args[0] === 'migrate')
        return `${kv((await m.commands.get('query-migrate')!.run({})) as Record<string, unknown>)}
`;
      return info(m, args);
    default:
      throw new CommandError(`unknown command: '${cmd}' (try 'help')`);
  }
}

function info(m: Monitor, args: string[]): string {
  const [what, ...rest] = args;
  switch (what) {
    case 'status':
      return `VM status: ${m.runState()}\n`;
    case 'iothreads':
      // QEMU's layout (one block per iothread), plus the devices on it.
      return m.machine
        .iothreads()
        .map(
          (t) =>
            `${t.id}:\n  thread_id=${t.threadId ?? '(not started)'}\n  poll-max-ns=${t.poll.maxNs}\n  poll-grow=${t.poll.grow}\n` +
            `  poll-shrink=${t.poll.shrink}\n  aio-max-batch=0\n  devices=${t.devices.join(',') || '(none)'}\n`,
        )
        .join('');
    case 'pci': {
      const buses = m.queryPci() as { devices: Record<string, unknown>[] }[];
      const out: string[] = [];
      for (const d of buses[0].devices) {
        const id = d.id as Record<string, number>;
        const cls = (d.class_info as Record<string, number>).class;
        out.push(`  Bus 0, device ${String(d.slot).padStart(2)}, function ${d.function}:`);
        out.push(`    class 0x${cls.toString(16).padStart(4, '0')}: PCI device ${hex4(id.vendor)}:${hex4(id.device)}  id "${d.qdev_id}"`);
        for (const r of d.regions as Record<string, unknown>[])
          out.push(
            `    BAR${r.bar}: ${r.mem_type_64 ? '64' : '32'} bit memory at 0x${(r.address as number).toString(16)} [0x${((r.address as number) + (r.size as number) - 1).toString(16)}]${r.mapped ? '' : ' (not mapped)'}`,
          );
        if (d.msix) {
          const x = d.msix as Record<string, unknown>;
          out.push(
            `    MSI-X: ${x.vectors} vectors, ${x.enabled ? 'enabled' : 'disabled'}${x['function-masked'] ? ', function-masked' : ''}`,
          );
        }
      }
      return `${out.join('\n')}\n`;
    }
    case 'unclaimed': {
      const r = m.unclaimedReport() as Record<
        'pio' | 'mmio',
        {
          reads: number;
          writes: number;
          regions: { start: number; end: number; reads: number; writes: number; 'last-address': number }[];
          other: { reads: number; writes: number };
        }
      >;
      const out: string[] = [];
      for (const bus of ['pio', 'mmio'] as const) {
        const b = r[bus];
        out.push(`${bus === 'pio' ? 'port I/O' : 'MMIO'}: reads ${b.reads}, writes ${b.writes}`);
        for (const x of b.regions)
          out.push(
            `  0x${x.start.toString(16)}-0x${x.end.toString(16)}: reads ${x.reads}, writes ${x.writes}, last 0x${x['last-address'].toString(16)}`,
          );
        if (b.other.reads + b.other.writes) out.push(`  further holes: reads ${b.other.reads}, writes ${b.other.writes}`);
      }
      return `${out.join('\n')}\n`;
    }
    case 'virtio':
      return (
        virtioDevices(m.devices)
          .map((v) => `${v.path} [${v.type}]\n`)
          .join('') || 'no virtio devices\n'
      );
    case 'virtqueues':
      return formatVirtqueues(virtqueueRows(m.devices, rest[0]));
    case 'virtio-status': {
      if (!rest[0]) throw new CommandError('usage: info virtio-status DEV');
      return virtioStatusText(rest[0], findVirtio(m.devices, rest[0]));
    }
    case 'virtio-queue-element': {
      if (!rest[0]) throw new CommandError('usage: info virtio-queue-element DEV QUEUE [INDEX]');
      const e = queueElement(
        findVirtio(m.devices, rest[0]),
        int(rest[1], 'QUEUE'),
        rest[2] === undefined ? undefined : int(rest[2], 'INDEX'),
      ) as {
        index: number;
        descs: { addr: number; len: number; flags: string[] }[];
        avail: Record<string, number>;
        used: Record<string, number>;
        'x-error'?: string;
      };
      const out = [
        `${rest[0]} queue ${rest[1]}: head ${e.index}, avail flags 0x${e.avail.flags.toString(16)} idx ${e.avail.idx}, used flags 0x${e.used.flags.toString(16)} idx ${e.used.idx}`,
      ];
      e.descs.forEach((x, i) =>
        out.push(`  desc ${i}: addr 0x${x.addr.toString(16)} len ${x.len}${x.flags.length ? ` (${x.flags.join(', ')})` : ''}`),
      );
      if (e['x-error']) out.push(`  error: ${e['x-error']}`);
      return `${out.join('\n')}\n`;
    }
    case 'virtio-queue-status': {
      if (!rest[0]) throw new CommandError('usage: info virtio-queue-status DEV QUEUE');
      return `${rest[0]} queue ${rest[1]}:\n${kv(queueStatus(findVirtio(m.devices, rest[0]), int(rest[1], 'QUEUE')))}\n`;
    }
    default:
      throw new CommandError(
        `info: unknown item '${what ?? ''}' (status, pci, virtio, virtqueues, virtio-status, virtio-queue-status, virtio-queue-element, migrate, unclaimed)`,
      );
  }
}

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

/** `info virtio-status`: the status keys, with both feature words decoded by name as QEMU prints them. */
function virtioStatusText(ref: string, pci: Parameters<typeof virtioStatus>[0]): string {
  const s = virtioStatus(pci);
  const d = pci.device;
  const rest = Object.fromEntries(Object.entries(s).filter(([k]) => !k.endsWith('-decoded')));
  const features = (title: string, bits: bigint) => {
    const f = decodeFeatures(d.deviceId, bits);
    const lines = [
      `  ${title}: 0x${bits.toString(16)}`,
      `    transports: ${f.transports.join(', ') || '-'}`,
      `    dev-features: ${f['dev-features'].join(', ') || '-'}`,
    ];
    if (f['unknown-dev-features']) lines.push(`    unknown-dev-features: 0x${f['unknown-dev-features'].toString(16)}`);
    return lines.join('\n');
  };
  delete rest['device-features'];
  delete rest['driver-features'];
  return `${ref}:\n${features('device-features', d.deviceFeatures)}\n${features('driver-features', d.driverFeatures)}\n${kv(rest)}\n`;
}
