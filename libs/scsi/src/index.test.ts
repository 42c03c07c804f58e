/**
 * The package's public API is the one agreed in notes/scsi-api.md (what the
 * virtio-scsi plugin and the vhost-user-scsi backend are written against).
 */
import * as api from './index';
import type { ScsiCommand, ScsiDiskOptions, ScsiLun, ScsiResponse, SenseKey } from './index';
import { sizedBackend } from './test-util';

describe('public API', () => {
  it('exports the agreed names and status values', () => {
    expect({
      SAM_STAT_GOOD: api.SAM_STAT_GOOD,
      SAM_STAT_CHECK_CONDITION: api.SAM_STAT_CHECK_CONDITION,
      SAM_STAT_BUSY: api.SAM_STAT_BUSY,
      SAM_STAT_RESERVATION_CONFLICT: api.SAM_STAT_RESERVATION_CONFLICT,
      SAM_STAT_TASK_ABORTED: api.SAM_STAT_TASK_ABORTED,
    }).toEqual({
      SAM_STAT_GOOD: 0x00,
      SAM_STAT_CHECK_CONDITION: 0x02,
      SAM_STAT_BUSY: 0x08,
      SAM_STAT_RESERVATION_CONFLICT: 0x18,
      SAM_STAT_TASK_ABORTED: 0x40,
    });
    expect(typeof api.ScsiDisk).toBe('function');
    expect(typeof api.ScsiTarget).toBe('function');
    expect(typeof api.decodeSense).toBe('function');
  });

  it('has the agreed shapes (checked by the compiler)', async () => {
    const opts: ScsiDiskOptions = {
      backend: sizedBackend(1 << 20),
      readonly: false,
      serial: 'S',
      vendor: 'V',
      product: 'P',
      revision: 'R',
      logicalBlockSize: 4096,
      wwn: 0x5000000000000001n,
    };
    const lun: ScsiLun = new api.ScsiDisk(opts);
    const kind: string = lun.kind;
    const target = new api.ScsiTarget();
    target.attach(0, lun);
    const luns: number[] = target.luns;
    const same: ScsiLun | undefined = target.lun(0);
    const cmd: ScsiCommand = { cdb: new Uint8Array(32), dataOut: [], dataIn: [], signal: new AbortController().signal };
    const res: ScsiResponse = await target.execute(0, cmd);
    const { status, sense, dataInLength, residual, overrun } = res;
    const decoded: SenseKey | undefined = api.decodeSense(sense);
    target.reset('nexus-reset');
    target.reset('power-on');
    lun.reset('lun-reset');
    const info: Record<string, unknown> = lun.info();
    expect([kind, luns, same, status, dataInLength, residual, overrun, decoded, typeof info]).toEqual([
      'disk',
      [0],
      lun,
      0,
      0,
      0,
      undefined,
      undefined,
      'object',
    ]);
    expect(target.detach(0)).toBe(lun);
    target.close();
    lun.close();
  });
});
