// The ioctl numbers and struct sizes in defs.ts against the installed <linux/vhost.h>.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as D from './defs';

describe('vhost ioctl definitions', () => {
  it('match <linux/vhost.h> as the C compiler sees it', () => {
    const names = Object.values(D.IOCTL_NAMES);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-defs-'));
    const src = path.join(dir, 'defs.c');
    fs.writeFileSync(
      src,
      `#include <stdio.h>\n#include <linux/vhost.h>\nint main(void){\n${names.map((n) => `printf("${n} %lu\\n", (unsigned long)${n});`).join('\n')}\nprintf("VHOST_F_LOG_ALL %d\\n", VHOST_F_LOG_ALL);\nprintf("VHOST_VRING_F_LOG %d\\n", VHOST_VRING_F_LOG);\nprintf("SIZEOF_vhost_scsi_target %zu\\n", sizeof(struct vhost_scsi_target));\nprintf("SIZEOF_vhost_vring_addr %zu\\n", sizeof(struct vhost_vring_addr));\nprintf("SIZEOF_vhost_memory_region %zu\\n", sizeof(struct vhost_memory_region));\nreturn 0;}\n`,
    );
    execFileSync('cc', [src, '-o', path.join(dir, 'defs')]);
    const out = execFileSync(path.join(dir, 'defs'))
      .toString()
      .trim()
      .split('\n')
      .map((l) => l.split(' '));
    fs.rmSync(dir, { recursive: true, force: true });
    const ours = D as unknown as Record<string, number>;
    for (const [name, value] of out) expect(`${name} ${ours[name]}`).toBe(`${name} ${value}`);
  });
});
