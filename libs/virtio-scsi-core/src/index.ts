/**
 * The virtio-scsi device model (virtio 1.2 section 5.6) over an ScsiTarget:
 * the in-VMM virtio-scsi plugin and the vhost-user-scsi backend process both
 * run it, so requests are parsed and answered by one piece of code.
 */
export { VirtioScsiDevice, VIRTIO_ID_SCSI, REQUEST_QUEUE_BASE, MAX_LUN, QUEUE_SIZE, scsiQueueName } from './device';
export type { ScsiAdapterCounters, ScsiPlaneMessage, VirtioScsiOptions, VirtioScsiExtraState } from './device';
export * from './request';
export * as virtioScsiUapi from './generated/virtio-scsi-uapi';
