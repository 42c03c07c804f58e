import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createLogger, lineLogger, parseLogFlag } from './logger';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-setup-logger-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function records(file: string): Record<string, unknown>[] {
  return fs
    .readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

test('device lines carry the device id and the queue; other lines carry neither; errors are warnings', () => {
  const file = path.join(tmp, 'a.jsonl');
  const log = lineLogger(createLogger({ level: 'trace', format: 'json', file }), ['vs0', 'd0']);
  log('vs0: the vhost-user back-end reported an error on queue 3; the device needs reset');
  log('d0: iothread io0 restarted');
  log('x9: not a device of this VM');
  log('unclaimed MMIO write at 0xe0000000 size 4 value 0x0');
  const [a, b, c, d] = records(file);
  expect(a).toMatchObject({
    level: 'warn',
    device: 'vs0',
    queue: 3,
    msg: 'vs0: the vhost-user back-end reported an error on queue 3; the device needs reset',
  });
  expect(b).toMatchObject({ level: 'info', device: 'd0', msg: 'd0: iothread io0 restarted' });
  expect(b).not.toHaveProperty('queue');
  for (const r of [c, d]) {
    expect(r).not.toHaveProperty('device');
    expect(r.level).toBe('info');
  }
});

test('each level: a logger writes its level and the ones above it', () => {
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
  for (const [i, level] of levels.entries()) {
    const file = path.join(tmp, `level-${level}.jsonl`);
    const log = createLogger({ level, format: 'json', file });
    for (const l of levels) log[l](`a ${l} line`);
    expect(records(file).map((r) => r.level)).toEqual(levels.slice(i));
  }
  const silent = path.join(tmp, 'silent.log');
  const log = createLogger({ level: 'silent', format: 'text', file: silent });
  log.fatal('not written');
  expect(fs.readFileSync(silent, 'utf8')).toBe('');
});

test('text lines: timestamp, level, message', () => {
  const file = path.join(tmp, 'text.log');
  createLogger({ level: 'info', format: 'text', file }).error('d0: host I/O error');
  expect(fs.readFileSync(file, 'utf8')).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR d0: host I\/O error\n$/);
});

test('parseLogFlag: later flags override, bad values name the flag', () => {
  const o = parseLogFlag('--log-format', 'json', parseLogFlag('--log-level', 'debug'));
  expect(o).toEqual({ level: 'debug', format: 'json' });
  expect(() => parseLogFlag('--log-level', 'INFO')).toThrow("--log-level: 'INFO' must be one of");
  expect(() => parseLogFlag('--log-file', '')).toThrow('--log-file: empty path');
});
