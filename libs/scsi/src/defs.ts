/**
 * SCSI constants, named as in the T10 documents (SAM-5, SPC-4, SBC-3).
 */

/** SAM status codes. */
export const SAM_STAT_GOOD = 0x00;
export const SAM_STAT_CHECK_CONDITION = 0x02;
export const SAM_STAT_BUSY = 0x08;
export const SAM_STAT_RESERVATION_CONFLICT = 0x18;
export const SAM_STAT_TASK_ABORTED = 0x40;

/** Operation codes this library knows (SPC-4 and SBC-3). */
export enum Op {
  TEST_UNIT_READY = 0x00,
  REQUEST_SENSE = 0x03,
  READ_6 = 0x08,
  WRITE_6 = 0x0a,
  INQUIRY = 0x12,
  MODE_SELECT_6 = 0x15,
  MODE_SENSE_6 = 0x1a,
  START_STOP_UNIT = 0x1b,
  READ_CAPACITY_10 = 0x25,
  READ_10 = 0x28,
  WRITE_10 = 0x2a,
  WRITE_AND_VERIFY_10 = 0x2e,
  VERIFY_10 = 0x2f,
  SYNCHRONIZE_CACHE_10 = 0x35,
  WRITE_SAME_10 = 0x41,
  UNMAP = 0x42,
  MODE_SELECT_10 = 0x55,
  MODE_SENSE_10 = 0x5a,
  READ_16 = 0x88,
  WRITE_16 = 0x8a,
  WRITE_AND_VERIFY_16 = 0x8e,
  VERIFY_16 = 0x8f,
  SYNCHRONIZE_CACHE_16 = 0x91,
  WRITE_SAME_16 = 0x93,
  SERVICE_ACTION_IN_16 = 0x9e,
  REPORT_LUNS = 0xa0,
  READ_12 = 0xa8,
  WRITE_12 = 0xaa,
  WRITE_AND_VERIFY_12 = 0xae,
  VERIFY_12 = 0xaf,
}

/** SERVICE ACTION IN(16) service actions. */
export const SAI_READ_CAPACITY_16 = 0x10;

/** Sense keys (SPC-4 table 48). */
export enum SenseKeyCode {
  NO_SENSE = 0x0,
  RECOVERED_ERROR = 0x1,
  NOT_READY = 0x2,
  MEDIUM_ERROR = 0x3,
  HARDWARE_ERROR = 0x4,
  ILLEGAL_REQUEST = 0x5,
  UNIT_ATTENTION = 0x6,
  DATA_PROTECT = 0x7,
  ABORTED_COMMAND = 0xb,
  MISCOMPARE = 0xe,
}

/** An additional sense code and qualifier, as `asc << 8 | ascq`. */
export enum Asc {
  NO_ADDITIONAL_SENSE = 0x0000,
  LUN_NOT_READY = 0x0400,
  WRITE_ERROR = 0x0c00,
  UNRECOVERED_READ_ERROR = 0x1100,
  PARAMETER_LIST_LENGTH_ERROR = 0x1a00,
  MISCOMPARE_DURING_VERIFY = 0x1d00,
  INVALID_OPCODE = 0x2000,
  LBA_OUT_OF_RANGE = 0x2100,
  INVALID_FIELD_IN_CDB = 0x2400,
  LUN_NOT_SUPPORTED = 0x2500,
  INVALID_FIELD_IN_PARAMETER_LIST = 0x2600,
  WRITE_PROTECTED = 0x2700,
  POWER_ON_RESET = 0x2900,
  BUS_DEVICE_RESET = 0x2903,
  I_T_NEXUS_LOSS = 0x2907,
  SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900,
}

export const SENSE_KEY_NAMES: Record<number, string> = {
  0x0: 'NO SENSE',
  0x1: 'RECOVERED ERROR',
  0x2: 'NOT READY',
  0x3: 'MEDIUM ERROR',
  0x4: 'HARDWARE ERROR',
  0x5: 'ILLEGAL REQUEST',
  0x6: 'UNIT ATTENTION',
  0x7: 'DATA PROTECT',
  0xb: 'ABORTED COMMAND',
  0xe: 'MISCOMPARE',
};

export const ASC_NAMES: Record<number, string> = {
  0x0000: 'NO ADDITIONAL SENSE INFORMATION',
  0x0400: 'LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE',
  0x0c00: 'WRITE ERROR',
  0x1100: 'UNRECOVERED READ ERROR',
  0x1a00: 'PARAMETER LIST LENGTH ERROR',
  0x1d00: 'MISCOMPARE DURING VERIFY OPERATION',
  0x2000: 'INVALID COMMAND OPERATION CODE',
  0x2100: 'LOGICAL BLOCK ADDRESS OUT OF RANGE',
  0x2400: 'INVALID FIELD IN CDB',
  0x2500: 'LOGICAL UNIT NOT SUPPORTED',
  0x2600: 'INVALID FIELD IN PARAMETER LIST',
  0x2700: 'WRITE PROTECTED',
  0x2900: 'POWER ON, RESET, OR BUS DEVICE RESET OCCURRED',
  0x2903: 'BUS DEVICE RESET FUNCTION OCCURRED',
  0x2907: 'I_T NEXUS LOSS OCCURRED',
  0x3900: 'SAVING PARAMETERS NOT SUPPORTED',
};

/** INQUIRY: SPC-4 version, response data format, and the version descriptors we claim. */
export const INQUIRY_VERSION_SPC4 = 0x06;
export const INQUIRY_RESPONSE_FORMAT = 0x02;
export const VERSION_DESCRIPTOR_SAM5 = 0x00a0;
export const VERSION_DESCRIPTOR_SPC4 = 0x0460;
export const VERSION_DESCRIPTOR_SBC3 = 0x04c0;
export const TYPE_DISK = 0x00;
/** Peripheral qualifier 011b with device type 1Fh: no logical unit at this LUN. */
export const PERIPHERAL_NO_LUN = 0x7f;

/** VPD pages. */
export const VPD_SUPPORTED_PAGES = 0x00;
export const VPD_UNIT_SERIAL = 0x80;
export const VPD_DEVICE_ID = 0x83;
export const VPD_BLOCK_LIMITS = 0xb0;
export const VPD_BLOCK_DEVICE_CHARACTERISTICS = 0xb1;
export const VPD_LOGICAL_BLOCK_PROVISIONING = 0xb2;

/** Mode pages. */
export const MODE_PAGE_CACHING = 0x08;
export const MODE_PAGE_CONTROL = 0x0a;
export const MODE_PAGE_ALL = 0x3f;
export const MODE_SUBPAGE_ALL = 0xff;
/** Page control field of MODE SENSE. */
export enum PageControl {
  CURRENT = 0,
  CHANGEABLE = 1,
  DEFAULT = 2,
  SAVED = 3,
}

/** REPORT LUNS select report codes. */
export const REPORT_LUNS_ALL = 0x00;
export const REPORT_LUNS_WELL_KNOWN = 0x01;
export const REPORT_LUNS_ALL_ACCESSIBLE = 0x02;

/** virtio-scsi addresses LUN 0..16383 (the flat space addressing range). */
export const MAX_LUN = 16383;

/** Device limits (the Block Limits VPD page reports them in logical blocks). */
export const MAX_TRANSFER_BYTES = 32 << 20;
export const OPTIMAL_TRANSFER_BYTES = 1 << 20;
export const MAX_UNMAP_BYTES = 1 << 30;
export const MAX_UNMAP_DESCRIPTORS = 256;
export const MAX_WRITE_SAME_BYTES = 1 << 30;
/** The unit we prefer for I/O and unmap alignment (host pages, file system blocks). */
export const PREFERRED_GRANULARITY_BYTES = 4096;
/** Bounded buffer for WRITE SAME replication and VERIFY comparison. */
export const BOUNCE_BYTES = 1 << 20;
