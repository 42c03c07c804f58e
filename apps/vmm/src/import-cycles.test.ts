// config.ts parses the flags of logger.ts and metrics.ts, which throw its ConfigError: a runtime
// import cycle there made whichever module loaded second see `undefined` exports. None may come back.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** The modules a source file imports at run time (relative imports; `import type` is erased). */
function runtimeImports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?'(\.[^']+)';/gm)) {
    if (m[1]) continue;
    const base = path.resolve(path.dirname(file), m[2]);
    const found = [`${base}.ts`, path.join(base, 'index.ts')].find((f) => fs.existsSync(f));
    if (found) out.push(found);
  }
  return out;
}

/** A chain of runtime imports from `start` back to itself, if there is one. */
function cycleThrough(start: string): string[] | undefined {
  const seen = new Set<string>();
  const walk = (file: string, chain: string[]): string[] | undefined => {
    for (const next of runtimeImports(file)) {
      if (next === start) return [...chain, next];
      if (seen.has(next)) continue;
      seen.add(next);
      const found = walk(next, [...chain, next]);
      if (found) return found;
    }
    return undefined;
  };
  return walk(start, [start]);
}

describe('import cycles', () => {
  it('finds a cycle when there is one (the checker itself)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-hardening-cycle-'));
    fs.writeFileSync(path.join(dir, 'a.ts'), "import { b } from './b';\nexport const a = b;\n");
    fs.writeFileSync(path.join(dir, 'b.ts'), "import type { a } from './a';\nimport { c } from './c';\nexport const b = c;\n");
    fs.writeFileSync(path.join(dir, 'c.ts'), "import { a } from './a';\nexport const c = 1;\n");
    expect(cycleThrough(path.join(dir, 'a.ts'))?.map((f) => path.basename(f))).toEqual(['a.ts', 'b.ts', 'c.ts', 'a.ts']);
    fs.rmSync(dir, { recursive: true });
  });

  it.each(['config.ts', 'logger.ts', 'metrics.ts'])('%s is on no runtime import cycle', (name) => {
    const chain = cycleThrough(path.join(__dirname, name));
    expect(chain?.map((f) => path.relative(__dirname, f))).toBeUndefined();
  });
});
