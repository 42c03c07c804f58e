/**
 * Kernel vhost ioctl numbers and struct sizes from <linux/vhost.h> and
 * <linux/vhost_types.h> (checked against the installed headers by
 * src/defs.test.ts).
 */
const VHOST_VIRTIO = 0xaf;
const IOC_WRITE = 1;
const IOC_READ = 2;
const ioc = (dir: number, nr: number, size: number) => ((dir << 30) | (size << 16) | (VHOST_VIRTIO << 8) | nr) >>> 0;
const io = (nr: number) => ioc(0, nr, 0);
const iow = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const ior = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

export const SIZEOF_vhost_vring_state = 8;
export const SIZEOF_vhost_vring_file = 8;
export const SIZEOF_vhost_vring_addr = 40;
export const SIZEOF_vhost_memory = 8;
export const SIZEOF_vhost_memory_region = 32;
export const SIZEOF_vhost_scsi_target = 232;
export const VHOST_SCSI_WWPN_LEN = 224;
export const VHOST_SCSI_ABI_VERSION = 1;
/** <linux/vhost_types.h>: the backend logs its writes to guest memory (a virtio feature bit). */
export const VHOST_F_LOG_ALL = 26;
/** vhost_vring_addr.flags bit: log used-ring writes at log_guest_addr. */
export const VHOST_VRING_F_LOG = 0;

export const VHOST_GET_FEATURES = ior(0x00, 8);
export const VHOST_SET_FEATURES = iow(0x00, 8);
export const VHOST_SET_OWNER = io(0x01);
export const VHOST_RESET_OWNER = io(0x02);
export const VHOST_SET_MEM_TABLE = iow(0x03, SIZEOF_vhost_memory);
export const VHOST_SET_LOG_BASE = iow(0x04, 8);
export const VHOST_SET_VRING_NUM = iow(0x10, SIZEOF_vhost_vring_state);
export const VHOST_SET_VRING_ADDR = iow(0x11, SIZEOF_vhost_vring_addr);
export const VHOST_SET_VRING_BASE = iow(0x12, SIZEOF_vhost_vring_state);
export const VHOST_GET_VRING_BASE = iowr(0x12, SIZEOF_vhost_vring_state);
export const VHOST_SET_VRING_KICK = iow(0x20, SIZEOF_vhost_vring_file);
export const VHOST_SET_VRING_CALL = iow(0x21, SIZEOF_vhost_vring_file);
export const VHOST_SET_VRING_ERR = iow(0x22, SIZEOF_vhost_vring_file);
export const VHOST_SCSI_SET_ENDPOINT = iow(0x40, SIZEOF_vhost_scsi_target);
export const VHOST_SCSI_CLEAR_ENDPOINT = iow(0x41, SIZEOF_vhost_scsi_target);
export const VHOST_SCSI_GET_ABI_VERSION = iow(0x42, 4);

export const IOCTL_NAMES: Record<number, string> = {
  [VHOST_GET_FEATURES]: 'VHOST_GET_FEATURES',
  [VHOST_SET_FEATURES]: 'VHOST_SET_FEATURES',
  [VHOST_SET_OWNER]: 'VHOST_SET_OWNER',
  [VHOST_RESET_OWNER]: 'VHOST_RESET_OWNER',
  [VHOST_SET_MEM_TABLE]: 'VHOST_SET_MEM_TABLE',
  [VHOST_SET_LOG_BASE]: 'VHOST_SET_LOG_BASE',
  [VHOST_SET_VRING_NUM]: 'VHOST_SET_VRING_NUM',
  [VHOST_SET_VRING_ADDR]: 'VHOST_SET_VRING_ADDR',
  [VHOST_SET_VRING_BASE]: 'VHOST_SET_VRING_BASE',
  [VHOST_GET_VRING_BASE]: 'VHOST_GET_VRING_BASE',
  [VHOST_SET_VRING_KICK]: 'VHOST_SET_VRING_KICK',
  [VHOST_SET_VRING_CALL]: 'VHOST_SET_VRING_CALL',
  [VHOST_SET_VRING_ERR]: 'VHOST_SET_VRING_ERR',
  [VHOST_SCSI_SET_ENDPOINT]: 'VHOST_SCSI_SET_ENDPOINT',
  [VHOST_SCSI_CLEAR_ENDPOINT]: 'VHOST_SCSI_CLEAR_ENDPOINT',
  [VHOST_SCSI_GET_ABI_VERSION]: 'VHOST_SCSI_GET_ABI_VERSION',
};
