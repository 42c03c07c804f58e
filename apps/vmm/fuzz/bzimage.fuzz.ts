/** The bzImage loader (64-bit boot protocol) on the input as the kernel file; see load-kernel.ts. */
export { fuzzKernel as fuzz, isExpected } from './load-kernel';

export const maxLen = 16384;
export const dictionary = ['HdrS', '\x55\xaa', '\x0c\x02', '\x01\x00'];
