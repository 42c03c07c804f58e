/**
 * Test helpers shared by every package's KVM tests. KVM tests run whenever
 * /dev/kvm exists; with VMM_REQUIRE_KVM=1 (set by CI) a missing or unusable
 * /dev/kvm fails the suite instead of skipping it.
 */
import * as fs from 'fs';

export function kvmUsable(): { ok: true } | { ok: false; why: string } {
  if (!fs.existsSync('/dev/kvm')) return { ok: false, why: '/dev/kvm does not exist' };
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { ok: false, why: 'no permission to open /dev/kvm' };
  }
  return { ok: true };
}

/** `describe` when KVM is usable; otherwise a skip, or a failing suite when VMM_REQUIRE_KVM=1. */
export function describeKvm(name: string, fn: () => void): void {
  const k = kvmUsable();
  if (k.ok) {
    describe(name, fn);
  } else if (process.env.VMM_REQUIRE_KVM === '1') {
    describe(name, () => {
      it('needs KVM', () => {
        throw new Error(`VMM_REQUIRE_KVM=1 but ${k.why}`);
      });
    });
  } else {
    describe.skip(`${name} (skipped: ${k.why})`, fn);
  }
}
