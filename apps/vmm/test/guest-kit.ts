/** Helpers for tests that boot the guest kit in-process or through the CLI. */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig, VmConfig } from '../src/config';
import { Machine, MachineExit } from '../src/machine/machine';

export const ROOT = path.resolve(__dirname, '../../..');
export const GUEST_ELF = path.join(ROOT, 'tools/guest-kit/build/guest.elf');
export const GUEST_BZIMAGE = path.join(ROOT, 'tools/guest-kit/build/guest.bzImage');
export const VMM_BIN = path.join(ROOT, 'apps/vmm/bin/vmm.js');

export function requireGuestKit(): void {
  if (!fs.existsSync(GUEST_ELF) || !fs.existsSync(GUEST_BZIMAGE))
    throw new Error(`guest kit not built: run \`make -C tools/guest-kit\` (looked for ${GUEST_ELF})`);
}

export interface Booted {
  machine: Machine;
  serial: () => string;
  run: () => Promise<{ exit: MachineExit; serial: string }>;
}

/** Creates a machine running the guest kit's `test` (not started until run()). */
export function guestKit(cmdline: string, overrides: Partial<VmConfig> = {}): Booted {
  requireGuestKit();
  let out = '';
  const config: VmConfig = {
    ...defaultConfig(),
    kernel: GUEST_ELF,
    cmdline,
    memoryBytes: 64 * 2 ** 20,
    serial: { kind: 'none' },
    ...overrides,
  };
  const machine = new Machine({ config, serialOut: (b) => (out += Buffer.from(b).toString('latin1')), log: () => undefined });
  return {
    machine,
    serial: () => out,
    run: async () => {
      const timer = setTimeout(() => void machine.stop('test timeout'), 30_000);
      const exit = await machine.run();
      clearTimeout(timer);
      return { exit, serial: out };
    },
  };
}

/** Parses "key=value" pairs from the guest-kit line starting with `prefix`. */
export function lineValues(serial: string, prefix: string): Record<string, string>[] {
  return serial
    .split(/\r?\n/)
    .filter((l) => l.startsWith(prefix))
    .map((l) => Object.fromEntries([...l.matchAll(/([\w-]+)=("[^"]*"|\S+)/g)].map((m) => [m[1], m[2].replace(/^"|"$/g, '')])));
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `vmm` binary (the bundle) and collects its output. */
export function runCli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [VMM_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}
