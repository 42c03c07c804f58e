/**
 * `iothread-vq-mapping=`: which iothread runs which request queue (QEMU 9's
 * property of that name, in a one-string form that fits `--device`):
 *
 * - `io0;io1`: the queues round-robin over the listed iothreads (queue q on
 *   the (q mod n)-th);
 * - `io0:0+2;io1:1+3`: each iothread with its queues; every queue exactly once.
 *
 * Entries are separated by `;` (quote it in a shell); either every entry
 * names its queues or none does.
 */

export interface VqMappingEntry {
  iothread: string;
  queues: number[];
}

const NAME = /^[A-Za-z][A-Za-z0-9_.-]*$/;

/** Parses and checks a mapping against the device's queue count; throws an Error saying what is wrong. */
export function parseVqMapping(value: string, numQueues: number): VqMappingEntry[] {
  const entries = value.split(';');
  if (entries.length > numQueues)
    throw new Error(`${entries.length} iothreads for ${numQueues} queue${numQueues === 1 ? '' : 's'} (each iothread needs a queue)`);
  const parsed = entries.map((e) => {
    const colon = e.indexOf(':');
    const iothread = colon < 0 ? e : e.slice(0, colon);
    if (!NAME.test(iothread)) throw new Error(`'${iothread}' is not an iothread id (a name starting with a letter)`);
    if (colon < 0) return { iothread, queues: undefined };
    const list = e.slice(colon + 1);
    const queues = list.split('+').map((q) => {
      if (!/^\d{1,5}$/.test(q)) throw new Error(`${iothread}: '${q}' is not a queue number (queues are written 0+2)`);
      const n = Number(q);
      if (n >= numQueues) throw new Error(`${iothread}: queue ${n} is out of range (num-queues=${numQueues}: queues 0..${numQueues - 1})`);
      return n;
    });
    return { iothread, queues };
  });
  const seen = new Set<string>();
  for (const p of parsed) {
    if (seen.has(p.iothread)) throw new Error(`iothread ${p.iothread} is named twice`);
    seen.add(p.iothread);
  }
  const explicit = parsed.filter((p) => p.queues !== undefined).length;
  if (explicit === 0) {
    // Round-robin: queue q on iothread q mod n.
    return parsed.map((p, k) => ({
      iothread: p.iothread,
      queues: Array.from({ length: numQueues }, (_, q) => q).filter((q) => q % parsed.length === k),
    }));
  }
  if (explicit !== parsed.length) throw new Error('either every iothread names its queues (io0:0+2;io1:1) or none does (io0;io1)');
  const owner = new Map<number, string>();
  for (const p of parsed)
    for (const q of p.queues!) {
      const other = owner.get(q);
      if (other !== undefined)
        throw new Error(`queue ${q} is mapped twice (${other === p.iothread ? p.iothread : `${other} and ${p.iothread}`})`);
      owner.set(q, p.iothread);
    }
  const missing = Array.from({ length: numQueues }, (_, q) => q).filter((q) => !owner.has(q));
  if (missing.length) throw new Error(`queue${missing.length > 1 ? 's' : ''} ${missing.join(', ')} mapped to no iothread`);
  return parsed.map((p) => ({ iothread: p.iothread, queues: [...p.queues!].sort((a, b) => a - b) }));
}
