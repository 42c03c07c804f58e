// The QMP server on a real unix socket with a small command table (no VM): id echo, reserved names, order, socket paths.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { QmpClient } from '@tsvmm/testing';
import { CommandRegistry } from './commands';
import { QmpServer, rawMember } from './qmp-server';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-monitor-qmpu-'));

describe('rawMember', () => {
  it.each([
    ['{"execute":"x","id":18446744073709551615}', '18446744073709551615'],
    ['{ "id" : -1.50e+300 , "execute": "x"}', '-1.50e+300'],
    ['{"id": {"a": [1, 9007199254740993, "s\\"}"], "b": {}}, "execute": "x"}', '{"a":[1,9007199254740993,"s\\"}"],"b":{}}'],
    ['{"id": "t1", "id": 12345678901234567890123}', '12345678901234567890123'],
    ['{"execute": "x", "arguments": {"id": 1}}', undefined],
    ['{"execute": "x"}', undefined],
    ['{}', undefined],
  ])('%s -> %s', (text, raw) => {
    expect(rawMember(text, 'id')).toBe(raw);
  });
});

describe('QmpServer', () => {
  let server: QmpServer;
  let sock: string;
  const commands = new CommandRegistry();
  const order: string[] = [];
  commands.add({ name: 'echo', args: { v: { type: 'int' } }, help: '', returns: 'int', run: (a) => a.v });
  commands.add({
    name: 'slow',
    args: { ms: { type: 'int' } },
    help: '',
    returns: 'int',
    run: async (a) => {
      order.push(`slow-start-${a.ms}`);
      await new Promise((r) => setTimeout(r, a.ms as number));
      order.push(`slow-end-${a.ms}`);
      return a.ms;
    },
  });

  beforeAll(async () => {
    sock = path.join(tmp, 'q.sock');
    server = new QmpServer(sock, commands, () => undefined);
    await server.listen();
  });
  afterAll(() => server.close());

  async function client(): Promise<QmpClient> {
    const c = await QmpClient.connect(sock);
    await c.run('qmp_capabilities');
    return c;
  }

  /** The raw reply lines after the greeting and negotiation. */
  async function rawLines(c: QmpClient, n: number): Promise<string[]> {
    const lines: string[] = [];
    let buf = '';
    await new Promise<void>((resolve) => {
      const on = (d: string) => {
        buf += d;
        const parts = buf.split('\r\n');
        buf = parts.pop()!;
        lines.push(...parts);
        if (lines.length >= n) {
          c.socket.off('data', on);
          resolve();
        }
      };
      c.socket.on('data', on);
    });
    return lines;
  }

  it('echoes any id exactly as sent, numbers beyond 2^53 included', async () => {
    const c = await client();
    const ids = [
      '18446744073709551615',
      '9007199254740993',
      '-0.1e-400',
      '"s\\u0041"',
      '[1,{"x":123456789012345678901234567890}]',
      'null',
      'true',
      '{}',
    ];
    const got = rawLines(c, ids.length);
    c.raw(ids.map((id) => `{"execute": "echo", "arguments": {"v": 1}, "id": ${id}}\n`).join(''));
    expect(await got).toEqual(ids.map((id) => `{"return":1,"id":${id}}`));
    const err = rawLines(c, 1);
    c.raw('{"execute": "nope", "id": 123456789012345678901}\n');
    expect(await err).toEqual([
      '{"error":{"class":"CommandNotFound","desc":"The command nope has not been found"},"id":123456789012345678901}',
    ]);
    c.close();
  });

  it.each(['toString', 'constructor', '__proto__', 'hasOwnProperty', 'isPrototypeOf'])(
    'refuses %s as an argument name and stays usable',
    async (key) => {
      const c = await client();
      const got = rawLines(c, 2);
      c.raw(`{"execute": "echo", "arguments": {"v": 1, "${key}": 2}, "id": 1}\n{"execute": "echo", "arguments": {"v": 2}, "id": 2}\n`);
      expect(await got).toEqual([
        `{"error":{"class":"GenericError","desc":"Parameter '${key}' is unexpected (a reserved name)"},"id":1}`,
        '{"return":2,"id":2}',
      ]);
      c.close();
    },
  );

  it("runs a connection's commands one at a time, replies in arrival order", async () => {
    const c = await client();
    order.length = 0;
    const n = 20;
    const got = rawLines(c, n);
    let burst = '';
    for (let i = 0; i < n; i++)
      burst +=
        i % 2
          ? `{"execute": "echo", "arguments": {"v": ${i}}, "id": ${i}}`
          : `{"execute": "slow", "arguments": {"ms": ${30 - i}}, "id": ${i}}`;
    c.raw(burst);
    const lines = await got;
    expect(lines.map((l) => JSON.parse(l).id)).toEqual([...Array(n).keys()]);
    expect(lines.map((l) => JSON.parse(l).return)).toEqual([...Array(n).keys()].map((i) => (i % 2 ? i : 30 - i)));
    // Never two slow commands at once.
    for (let i = 0; i < order.length; i += 2) expect(order[i].replace('start', 'end')).toBe(order[i + 1]);
    c.close();
  });

  it('refuses socket paths sun_path cannot hold and missing directories, with the reason', async () => {
    const long = path.join(tmp, 'x'.repeat(120));
    await expect(new QmpServer(long, commands, () => undefined).listen()).rejects.toThrow(
      `--qmp unix:${long}: socket path is ${Buffer.byteLength(long)} bytes; a unix socket path holds at most 107`,
    );
    const missing = path.join(tmp, 'no-such-dir', 'q.sock');
    await expect(new QmpServer(missing, commands, () => undefined).listen()).rejects.toThrow(
      `--qmp unix:${missing}: directory ${path.join(tmp, 'no-such-dir')} does not exist`,
    );
  });
});
