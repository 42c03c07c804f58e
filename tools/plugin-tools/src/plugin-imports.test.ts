// The plugin import rule: on the real plugins/*, and on a small fixture workspace that breaks it every way.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { checkPluginImports, formatViolation } from './plugin-imports';

const ROOT = path.resolve(__dirname, '../../..');

describe('plugin import rule', () => {
  it('holds for every plugin in the workspace', () => {
    expect(checkPluginImports(ROOT).map(formatViolation)).toEqual([]);
  });

  it('names each forbidden import with file, line and reason', () => {
    const ws = fs.mkdtempSync(path.join(os.tmpdir(), 'plugin-imports-'));
    const write = (p: string, text: string) => {
      fs.mkdirSync(path.dirname(path.join(ws, p)), { recursive: true });
      fs.writeFileSync(path.join(ws, p), text);
    };
    try {
      write('package.json', JSON.stringify({ name: 'ws', devDependencies: { 'fast-check': '1' } }));
      write('libs/pci/package.json', JSON.stringify({ name: '@tsvmm/pci' }));
      write('libs/block/package.json', JSON.stringify({ name: '@tsvmm/block' }));
      write('apps/vmm/package.json', JSON.stringify({ name: '@tsvmm/vmm' }));
      write('plugins/other/package.json', JSON.stringify({ name: '@tsvmm/other' }));
      write('plugins/bad/package.json', JSON.stringify({ name: '@tsvmm/bad', dependencies: { 'left-pad': '1' } }));
      write(
        'plugins/bad/src/index.ts',
        [
          "import * as fs from 'fs';",
          "import { PLUGIN_API_VERSION } from '@tsvmm/pci';",
          "import { RawFileBackend } from '@tsvmm/block';",
          "import { x } from './x';",
          "import pad from 'left-pad';",
          "import fc from 'fast-check';",
          "import { readFile } from 'node:fs/promises';",
          "// import { nope } from '@tsvmm/other'; (a comment does not count)",
          "import { other } from '@tsvmm/other';",
          "import { main } from '../../../apps/vmm/src/main';",
          "export { y } from '../../other/src/y';",
          "const vmm = require('@tsvmm/vmm');",
          "const later = import('lodash');",
          "import { z } from '@tsvmm/nowhere';",
        ].join('\n'),
      );
      expect(checkPluginImports(ws).map((v) => `${v.file}:${v.line} ${v.specifier}: ${v.reason}`)).toEqual([
        'plugins/bad/src/index.ts:9 @tsvmm/other: is another plugin (plugins/other)',
        'plugins/bad/src/index.ts:10 ../../../apps/vmm/src/main: reaches into apps/vmm (the VMM app) by a relative path',
        'plugins/bad/src/index.ts:11 ../../other/src/y: reaches into plugins/other (another plugin) by a relative path',
        'plugins/bad/src/index.ts:12 @tsvmm/vmm: is the VMM app',
        'plugins/bad/src/index.ts:13 lodash: is not a dependency in plugins/bad/package.json',
        'plugins/bad/src/index.ts:14 @tsvmm/nowhere: is no workspace library',
      ]);
      expect(formatViolation(checkPluginImports(ws)[0])).toBe(
        "plugins/bad/src/index.ts:9: imports '@tsvmm/other', which is another plugin (plugins/other) " +
          '(a plugin may import @tsvmm/virtio-core, @tsvmm/pci, @tsvmm/kvm-native and the other shared libs/*, never another plugin or apps/vmm)',
      );
    } finally {
      fs.rmSync(ws, { recursive: true, force: true });
    }
  });
});
