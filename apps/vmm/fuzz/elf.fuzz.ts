/** The PVH ELF loader (parseElf, loadPvh) on the input as the kernel file; see load-kernel.ts. */
export { fuzzKernel as fuzz, isExpected } from './load-kernel';

export const maxLen = 16384;
export const dictionary = ['\x7fELF', 'Xen\0', '\x12\0\0\0', '\x04\0\0\0', '\x01\0\0\0', '\x00\x00\x10\x00'];
