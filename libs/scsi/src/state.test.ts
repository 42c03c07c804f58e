/**
 * Migration state of a logical unit and a target: what a guest would notice
 * after a move (a pending unit attention, D_SENSE set by MODE SELECT) comes
 * back on a fresh unit; absent fields mean the power-on state.
 */
import { ScsiTarget } from './target';
import { cdb, expectGood, expectSense, memDisk, run, setDescriptorSense } from './test-util';

describe('logical unit state', () => {
  it('a pending unit attention and D_SENSE move to a fresh disk; the unit attention is reported once, in descriptor format', async () => {
    const { disk } = memDisk();
    await setDescriptorSense(disk, true);
    disk.reset('nexus-reset'); // I_T NEXUS LOSS, D_SENSE kept
    const s = JSON.parse(JSON.stringify(disk.saveState()));
    expect(s).toEqual({ kind: 'disk', pendingUnitAttention: 0x2907, dSense: true });

    const { disk: fresh } = memDisk();
    fresh.loadState(s);
    expect(fresh.descriptorSense).toBe(true);
    expectSense(await run(fresh, cdb(0x00)), 6, 0x29, 7, 'descriptor');
    expectGood(await run(fresh, cdb(0x00)));
  });

  it('an empty state is the power-on state minus the power-on unit attention (what an old stream meant)', async () => {
    const { disk } = memDisk();
    await setDescriptorSense(disk, true);
    disk.loadState({});
    expect(disk.descriptorSense).toBe(false);
    expectGood(await run(disk, cdb(0x00)));
    expect(disk.saveState()).toEqual({ kind: 'disk' });
  });

  it('refuses a malformed state with a clear error and keeps its own', async () => {
    const { disk } = memDisk();
    await setDescriptorSense(disk, true);
    expect(() => disk.loadState({ pendingUnitAttention: -3 })).toThrow(/pendingUnitAttention -3 is not an ASC\/ASCQ pair/);
    expect(() => disk.loadState({ dSense: 'yes' as unknown as boolean })).toThrow(/dSense "yes" is not a boolean/);
    expect(() => disk.loadState({ kind: 'tape' })).toThrow(/kind 'tape'/);
    expect(disk.descriptorSense).toBe(true);
  });
});

describe('target state', () => {
  it('keys units by LUN; a LUN not attached here is refused, nothing applied', async () => {
    const a = new ScsiTarget();
    a.attach(0, memDisk().disk);
    a.attach(7, memDisk().disk);
    await setDescriptorSense(a.lun(7) as never, true);
    a.lun(0)!.reset('lun-reset');
    const s = a.saveState();
    expect(s).toEqual({ 0: { kind: 'disk', pendingUnitAttention: 0x2903 }, 7: { kind: 'disk', dSense: true } });

    const b = new ScsiTarget();
    b.attach(0, memDisk().disk);
    b.attach(7, memDisk().disk);
    b.loadState(s);
    expect(b.lun(7)!.descriptorSense).toBe(true);
    expectSense(await b.execute(0, { cdb: cdb(0x00), dataIn: [], dataOut: [] }), 6, 0x29, 3);

    const c = new ScsiTarget();
    c.attach(0, memDisk().disk);
    expect(() => c.loadState(s)).toThrow(/LUN 7, which is not attached here/);
    expectGood(await c.execute(0, { cdb: cdb(0x00), dataIn: [], dataOut: [] }));
  });
});
