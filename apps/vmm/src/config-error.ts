/**
 * The error of a bad command line or config file. In a module of its own so
 * that logger.ts and metrics.ts (whose flags config.ts parses) can throw it
 * without importing config.ts back.
 */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}
