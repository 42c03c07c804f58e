/**
 * Inputs shared by the packages' fuzz targets (docs/fuzzing.md): guest memory
 * and rings built from fuzz bytes, and an in-memory block backend. A separate
 * entry point (`@tsvmm/testing/fuzz`) so a plugin's fuzz target reaches it by
 * package name, like its other shared libraries.
 */
export * from './virtio-input';
export * from './mem-backend';
