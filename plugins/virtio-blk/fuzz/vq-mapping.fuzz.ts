/**
 * `iothread-vq-mapping=` values through the parser the plugin runs before a
 * device exists. Input byte 0: num-queues (1..16, as the property allows);
 * the rest: the value (latin1). A refusal is a plain Error with a message; a
 * mapping it accepts must give every queue exactly one iothread, every
 * iothread at least one queue, and no iothread twice.
 */
import { parseVqMapping } from '../src/vq-mapping';

export const maxLen = 256;
export const dictionary = [';', ':', '+', 'io0', 'io1', '0', '1', '15', '16'];

export function fuzz(data: Buffer): void {
  if (data.length < 1) return;
  const numQueues = (data[0] % 16) + 1;
  const value = data.subarray(1).toString('latin1');
  let m;
  try {
    m = parseVqMapping(value, numQueues);
  } catch (e) {
    if (e instanceof Error && e.constructor === Error && e.message.length > 0) return;
    throw e;
  }
  const names = new Set(m.map((e) => e.iothread));
  if (names.size !== m.length) throw new Error(`an iothread named twice was accepted: ${JSON.stringify(m)}`);
  const queues = m.flatMap((e) => e.queues).sort((a, b) => a - b);
  if (queues.join() !== Array.from({ length: numQueues }, (_, q) => q).join())
    throw new Error(`queues not mapped exactly once for num-queues=${numQueues}: ${JSON.stringify(m)}`);
  if (m.some((e) => e.queues.length === 0)) throw new Error(`an iothread without queues was accepted: ${JSON.stringify(m)}`);
  if (m.some((e) => !/^[A-Za-z][A-Za-z0-9_.-]*$/.test(e.iothread))) throw new Error(`a bad iothread id was accepted: ${JSON.stringify(m)}`);
}
