/**
 * Building responses: the direction/length (overrun) check, data-in with an
 * ALLOCATION LENGTH, CHECK CONDITION and the residual, shared by the disk and
 * the target.
 */
import type { ParsedCdb } from './cdb';
import { SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD, SAM_STAT_TASK_ABORTED } from './defs';
import { type CheckCondition, encodeSense } from './sense';
import { copyToViews, totalLength } from './sg';
import type { ScsiCommand, ScsiResponse } from './types';

const NO_SENSE_DATA = new Uint8Array(0);

/** Byte counts of the buffers a command came with. */
export interface Offered {
  in: number;
  out: number;
}

export function offered(cmd: ScsiCommand): Offered {
  return { in: totalLength(cmd.dataIn), out: totalLength(cmd.dataOut) };
}

/**
 * Whether the buffers do not fit the command: both directions offered, the
 * wrong direction, or fewer bytes than the transfer length (the ALLOCATION
 * LENGTH for commands that have one). No-data commands accept any one direction.
 */
export function isOverrun(p: Pick<ParsedCdb, 'dir' | 'length'>, o: Offered): boolean {
  if (o.in > 0 && o.out > 0) return true;
  if (p.dir === 'in') return o.out > 0 || o.in < p.length;
  if (p.dir === 'out') return o.in > 0 || o.out < p.length;
  return false;
}

export function overrunResponse(o: Offered): ScsiResponse {
  return { status: SAM_STAT_GOOD, sense: NO_SENSE_DATA, dataInLength: 0, residual: o.in + o.out, overrun: true };
}

export function abortedResponse(o: Offered): ScsiResponse {
  return { status: SAM_STAT_TASK_ABORTED, sense: NO_SENSE_DATA, dataInLength: 0, residual: o.in + o.out };
}

/** CHECK CONDITION: nothing counts as transferred. */
export function checkConditionResponse(cc: CheckCondition, descriptor: boolean, o: Offered): ScsiResponse {
  return { status: SAM_STAT_CHECK_CONDITION, sense: encodeSense(cc, descriptor), dataInLength: 0, residual: o.in + o.out };
}

/** GOOD, with the bytes moved in each direction. */
export function goodResponse(o: Offered, dataInLength: number, dataOutLength: number): ScsiResponse {
  return { status: SAM_STAT_GOOD, sense: NO_SENSE_DATA, dataInLength, residual: o.in + o.out - dataInLength - dataOutLength };
}

/** Copies min(allocation length, data length) bytes of `data` into dataIn; returns the count. */
export function putDataIn(cmd: ScsiCommand, data: Uint8Array, alloc: number): number {
  return copyToViews(cmd.dataIn, data.subarray(0, Math.min(alloc, data.length)));
}
