import { checkArguments, CommandError } from './commands';

describe('checkArguments', () => {
  const spec = { mode: { type: 'enum' as const, values: ['fast', 'slow'] }, n: { type: 'int' as const, optional: true } };
  const err = (args: Record<string, unknown>) => {
    try {
      checkArguments(spec, args);
    } catch (e) {
      expect(e).toBeInstanceOf(CommandError);
      return (e as Error).message;
    }
    throw new Error('accepted');
  };

  it('accepts a listed enum value', () => {
    expect(() => checkArguments(spec, { mode: 'slow', n: 3 })).not.toThrow();
  });

  it('names a refused enum value as sent and lists the accepted ones', () => {
    expect(err({ mode: 'medium' })).toBe("Parameter 'mode' does not accept value 'medium' (expected one of: fast, slow)");
  });

  it('shows a hostile enum value escaped and cut short, never [object Object]', () => {
    const m = err({ mode: 'x\n{"event":"SHUTDOWN"}' + 'y'.repeat(500) });
    expect(m).not.toContain('\n');
    expect(m).toMatch(
      /^Parameter 'mode' does not accept value "x\\n\{\\"event\\":\\"SHUTDOWN\\"\}y+\.\.\. \(expected one of: fast, slow\)$/,
    );
    expect(m.length).toBeLessThan(160);
    expect(err({ mode: { a: 1 } })).toBe("Invalid parameter type for 'mode', expected: string");
  });
});
