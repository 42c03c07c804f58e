import { kebabCaseFields } from './virtio-info';

test('camelCase fields get kebab-case twins (nested too); the old names stay as aliases; kebab and plain names are kept', () => {
  const info = { bytesRead: 5, 'in-flight': 1, capacity: 8, luns: { '0': { checkConditions: 2, writes: 3 } }, list: [{ rxNoBuffers: 0 }] };
  expect(kebabCaseFields(info)).toEqual({
    'bytes-read': 5,
    bytesRead: 5,
    'in-flight': 1,
    capacity: 8,
    luns: { '0': { 'check-conditions': 2, checkConditions: 2, writes: 3 } },
    list: [{ 'rx-no-buffers': 0, rxNoBuffers: 0 }],
  });
});
