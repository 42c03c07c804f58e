import { parseProperties, parseSize, PropertySchema, showValue } from './properties';

const schema: PropertySchema = {
  file: { type: 'path', description: 'image file', required: true },
  readonly: { type: 'bool', description: 'read-only', default: false },
  'num-queues': { type: 'int', description: 'queues', default: 1, min: 1, max: 16 },
  cache: { type: 'enum', description: 'cache mode', values: ['writeback', 'none'], default: 'writeback' },
};

describe('parseProperties', () => {
  const what = "device 'd0' (test-dev)";
  it('parses values and fills defaults', () => {
    expect(parseProperties(what, schema, { file: '/tmp/x', readonly: 'on', 'num-queues': '0x4' })).toEqual({
      file: '/tmp/x',
      readonly: true,
      'num-queues': 4,
      cache: 'writeback',
    });
  });
  it.each([
    [{ file: 'a', bogus: '1' }, "device 'd0' (test-dev): unknown property 'bogus' (known: file, readonly, num-queues, cache)"],
    [{}, "device 'd0' (test-dev): property 'file' is required (image file)"],
    [{ file: 'a', readonly: 'maybe' }, "device 'd0' (test-dev): property 'readonly' must be on or off, got 'maybe'"],
    [{ file: 'a', 'num-queues': '17' }, "device 'd0' (test-dev): property 'num-queues' must be at most 16, got '17'"],
    [{ file: 'a', 'num-queues': 'two' }, "device 'd0' (test-dev): property 'num-queues' must be an integer, got 'two'"],
    [{ file: 'a', cache: 'always' }, "device 'd0' (test-dev): property 'cache' must be one of writeback, none, got 'always'"],
  ])('rejects %j', (raw, msg) => {
    expect(() => parseProperties(what, schema, raw)).toThrow(msg);
  });
  it.each(['toString', 'constructor', '__proto__', 'hasOwnProperty', 'valueOf'])('refuses the inherited name %s as a property', (key) => {
    const raw: Record<string, unknown> = { file: 'a' };
    Object.defineProperty(raw, key, { value: 'x', enumerable: true });
    expect(() => parseProperties(what, schema, raw)).toThrow(`device 'd0' (test-dev): '${key}' is not a property name (a reserved name)`);
  });
});

describe('parseSize', () => {
  it.each([
    ['256M', 256 * 2 ** 20],
    ['1G', 2 ** 30],
    ['4096', 4096],
    ['64k', 65536],
    ['2GiB', 2 * 2 ** 30],
    ['0x1000', 4096],
  ])('%s', (t, v) => expect(parseSize(t)).toBe(v));
  it.each(['', 'M', '12Q', '-1M', '1.5G'])('rejects %s', (t) => expect(parseSize(t)).toBeUndefined());
});

describe('property errors show what was given', () => {
  const what = "device 'd0' (test-dev)";
  it.each([
    [{ a: 1 }, '{"a":1}'],
    [[1, 2], '[1,2]'],
    [null, 'null'],
    [17, '17'],
    [true, 'true'],
  ])('a JSON value %j (from a --config file) appears as JSON, not [object Object]', (v, shown) => {
    const m = (() => {
      try {
        parseProperties(what, schema, { file: 'a', 'num-queues': v });
      } catch (e) {
        return (e as Error).message;
      }
      return 'accepted';
    })();
    expect(m).toContain(`property 'num-queues' must be`);
    expect(m).toContain(`got ${shown}`);
    expect(m).not.toContain('[object');
  });
  it('escapes control characters and shortens a long value', () => {
    expect(showValue('a\nb')).toBe('"a\\nb"');
    expect(showValue('z'.repeat(200))).toBe(`'${'z'.repeat(76)}...`);
    expect(showValue(10n)).toBe('"10"');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(showValue(cyclic)).toBe('(unprintable object)');
  });
});
