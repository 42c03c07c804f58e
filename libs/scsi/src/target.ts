/**
 * One SCSI target: the LUN table, REPORT LUNS, and the SPC-4 answers for a LUN
 * with no logical unit (INQUIRY: peripheral qualifier 011b, type 1Fh; REQUEST
 * SENSE: LOGICAL UNIT NOT SUPPORTED; anything else: CHECK CONDITION 05/25/00).
 */
import { type ParsedCdb, parseCdb } from './cdb';
import { MAX_LUN, Op, PERIPHERAL_NO_LUN, VPD_SUPPORTED_PAGES } from './defs';
import { standardInquiry } from './inquiry';
import { reportLuns } from './luns';
import {
  abortedResponse,
  checkConditionResponse,
  goodResponse,
  isOverrun,
  type Offered,
  offered,
  overrunResponse,
  putDataIn,
} from './respond';
import { CheckCondition, encodeSense, invalidFieldInCdb, lunNotSupported } from './sense';
import type { ScsiCommand, ScsiLun, ScsiLunState, ScsiResponse } from './types';

export class ScsiTarget {
  private readonly units = new Map<number, ScsiLun>();

  /** Adds a logical unit; throws if the LUN is taken or not in 0..16383. */
  attach(lun: number, unit: ScsiLun): void {
    if (!Number.isInteger(lun) || lun < 0 || lun > MAX_LUN) throw new RangeError(`LUN ${lun} is not in 0..${MAX_LUN}`);
    if (this.units.has(lun)) throw new Error(`LUN ${lun} is already attached`);
    this.units.set(lun, unit);
  }

  /** Removes a logical unit (not closed: the caller owns it now). */
  detach(lun: number): ScsiLun | undefined {
    const unit = this.units.get(lun);
    this.units.delete(lun);
    return unit;
  }

  lun(lun: number): ScsiLun | undefined {
    return this.units.get(lun);
  }

  get luns(): number[] {
    return [...this.units.keys()].sort((a, b) => a - b);
  }

  /** Not an async function: the unit's own promise is handed on (one promise less per command on the I/O path). */
  execute(lun: number, cmd: ScsiCommand): Promise<ScsiResponse> {
    try {
      const unit = this.units.get(lun);
      if (cmd.cdb.length > 0 && cmd.cdb[0] === Op.REPORT_LUNS) return Promise.resolve(this.reportLuns(cmd, unit?.descriptorSense ?? false));
      if (unit) return unit.execute(cmd);
      return Promise.resolve(this.noUnit(cmd));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Resets every logical unit (each queues its unit attention). */
  reset(reason: 'nexus-reset' | 'power-on'): void {
    for (const unit of this.units.values()) unit.reset(reason);
  }

  /** Migration: each LUN's state, keyed by LUN number (units without saveState are left out). */
  saveState(): Record<string, ScsiLunState> {
    const out: Record<string, ScsiLunState> = {};
    for (const [lun, unit] of this.units) if (unit.saveState) out[String(lun)] = unit.saveState();
    return out;
  }

  /**
   * Migration: applies saved LUN states. A LUN in the state that is not
   * attached here is a configuration mismatch; an attached LUN absent from
   * the state gets the empty state (no unit attention, default mode
   * parameters: what saveState leaves out). Everything is checked first;
   * on a refusal nothing changes.
   */
  loadState(state: Record<string, ScsiLunState>): void {
    this.checkState(state);
    const todo = [...this.units].filter(([, u]) => u.loadState).map(([lun, u]) => [u, state[String(lun)] ?? {}] as const);
    const before = todo.map(([u]) => u.saveState?.());
    try {
      for (const [unit, s] of todo) unit.loadState!(s);
    } catch (e) {
      todo.forEach(([u], i) => before[i] && u.loadState!(before[i]!));
      throw e;
    }
  }

  /** Migration: checks saved LUN states as loadState would, applying nothing. */
  checkState(state: Record<string, ScsiLunState>): void {
    if (!state || typeof state !== 'object' || Array.isArray(state)) throw new Error('malformed SCSI target state');
    for (const key of Object.keys(state)) {
      const unit = /^\d+$/.test(key) ? this.units.get(Number(key)) : undefined;
      if (!unit) throw new Error(`the migrated state has LUN ${key}, which is not attached here`);
      if (!unit.loadState) throw new Error(`LUN ${key} (${unit.kind}) cannot load a migrated state`);
      try {
        unit.checkState?.(state[key]);
      } catch (e) {
        throw new Error(`LUN ${key}: ${(e as Error).message}`);
      }
    }
  }

  /** Closes and forgets every logical unit. */
  close(): void {
    for (const unit of this.units.values()) unit.close();
    this.units.clear();
  }

  /** Parses, checks the buffers, and runs `body` for the commands the target answers itself. */
  private respond(cmd: ScsiCommand, descriptor: boolean, body: (p: ParsedCdb, o: Offered) => number): ScsiResponse {
    const o = offered(cmd);
    if (cmd.signal?.aborted) return abortedResponse(o);
    try {
      const p = parseCdb(cmd.cdb);
      if (isOverrun(p, o)) return overrunResponse(o);
      return goodResponse(o, body(p, o), 0);
    } catch (e) {
      if (e instanceof CheckCondition) return checkConditionResponse(e, descriptor, o);
      throw e;
    }
  }

  private reportLuns(cmd: ScsiCommand, descriptor: boolean): ScsiResponse {
    return this.respond(cmd, descriptor, (p) => {
      if (p.req.op !== 'report-luns') throw new Error('not REPORT LUNS');
      return putDataIn(cmd, reportLuns(p.req.select, this.luns), p.req.alloc);
    });
  }

  private noUnit(cmd: ScsiCommand): ScsiResponse {
    const op = cmd.cdb.length > 0 ? cmd.cdb[0] : -1;
    if (op !== Op.INQUIRY && op !== Op.REQUEST_SENSE) return checkConditionResponse(lunNotSupported(), false, offered(cmd));
    return this.respond(cmd, false, (p) => {
      if (p.req.op === 'request-sense') return putDataIn(cmd, encodeSense(lunNotSupported(), p.req.desc), p.req.alloc);
      if (p.req.op !== 'inquiry') throw new Error('not INQUIRY');
      if (!p.req.evpd) return putDataIn(cmd, standardInquiry(PERIPHERAL_NO_LUN), p.req.alloc);
      if (p.req.page !== VPD_SUPPORTED_PAGES) throw invalidFieldInCdb(2);
      return putDataIn(cmd, new Uint8Array([PERIPHERAL_NO_LUN, VPD_SUPPORTED_PAGES, 0, 1, VPD_SUPPORTED_PAGES]), p.req.alloc);
    });
  }
}
