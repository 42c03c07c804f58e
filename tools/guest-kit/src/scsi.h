/*
 * guest-kit: virtio-scsi driver (virtio 1.2 section 5.6; layouts as in
 * Linux's include/uapi/linux/virtio_scsi.h) on the virtio-pci transport of
 * virtio.c, plus the SCSI (SPC/SBC) constants the scsi-* tests use.
 */
#ifndef GUEST_KIT_SCSI_H
#define GUEST_KIT_SCSI_H

#include "virtio.h"

/* ---- PCI ids ---- */
#define VIRTIO_PCI_SCSI_MODERN   0x1048	/* 0x1040 + device type 8 */
#define VIRTIO_PCI_SCSI_TRANS    0x1004

/* ---- struct virtio_scsi_config ---- */
#define VSCSI_CFG_NUM_QUEUES     0	/* u32 */
#define VSCSI_CFG_SEG_MAX        4
#define VSCSI_CFG_MAX_SECTORS    8
#define VSCSI_CFG_CMD_PER_LUN    12
#define VSCSI_CFG_EVENT_INFO     16
#define VSCSI_CFG_SENSE_SIZE     20
#define VSCSI_CFG_CDB_SIZE       24
#define VSCSI_CFG_MAX_CHANNEL    28	/* u16 */
#define VSCSI_CFG_MAX_TARGET     30	/* u16 */
#define VSCSI_CFG_MAX_LUN        32	/* u32 */

#define VIRTIO_SCSI_CDB_SIZE     32
#define VIRTIO_SCSI_SENSE_SIZE   96

/* ---- feature bits ---- */
#define VIRTIO_SCSI_F_INOUT      0
#define VIRTIO_SCSI_F_HOTPLUG    1
#define VIRTIO_SCSI_F_CHANGE     2
#define VIRTIO_SCSI_F_T10_PI     3

/* ---- response codes ---- */
#define VIRTIO_SCSI_S_OK                 0	/* also FUNCTION_COMPLETE */
#define VIRTIO_SCSI_S_OVERRUN            1
#define VIRTIO_SCSI_S_ABORTED            2
#define VIRTIO_SCSI_S_BAD_TARGET         3
#define VIRTIO_SCSI_S_RESET              4
#define VIRTIO_SCSI_S_BUSY               5
#define VIRTIO_SCSI_S_TRANSPORT_FAILURE  6
#define VIRTIO_SCSI_S_TARGET_FAILURE     7
#define VIRTIO_SCSI_S_NEXUS_FAILURE      8
#define VIRTIO_SCSI_S_FAILURE            9
#define VIRTIO_SCSI_S_FUNCTION_SUCCEEDED 10
#define VIRTIO_SCSI_S_FUNCTION_REJECTED  11
#define VIRTIO_SCSI_S_INCORRECT_LUN      12

/* ---- control queue ---- */
#define VIRTIO_SCSI_T_TMF                     0
#define VIRTIO_SCSI_T_AN_QUERY                1
#define VIRTIO_SCSI_T_AN_SUBSCRIBE            2
#define VIRTIO_SCSI_T_TMF_ABORT_TASK          0
#define VIRTIO_SCSI_T_TMF_ABORT_TASK_SET      1
#define VIRTIO_SCSI_T_TMF_CLEAR_ACA           2
#define VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET      3
#define VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET     4
#define VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET  5
#define VIRTIO_SCSI_T_TMF_QUERY_TASK          6
#define VIRTIO_SCSI_T_TMF_QUERY_TASK_SET      7

/* AN event classes (event_requested / event_actual bits) */
#define VIRTIO_SCSI_EVT_ASYNC_OPERATIONAL_CHANGE 2
#define VIRTIO_SCSI_EVT_ASYNC_POWER_MGMT         4
#define VIRTIO_SCSI_EVT_ASYNC_EXTERNAL_REQUEST   8
#define VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE       16
#define VIRTIO_SCSI_EVT_ASYNC_MULTI_HOST         32
#define VIRTIO_SCSI_EVT_ASYNC_DEVICE_BUSY        64

#define VIRTIO_SCSI_S_SIMPLE     0	/* task_attr */

/* ---- wire structures (packed, little-endian) ---- */
struct virtio_scsi_cmd_req {
	uint8_t lun[8];
	uint64_t tag;
	uint8_t task_attr;
	uint8_t prio;
	uint8_t crn;
	uint8_t cdb[VIRTIO_SCSI_CDB_SIZE];
} __attribute__((packed));		/* 51 bytes */

struct virtio_scsi_cmd_resp {
	uint32_t sense_len;
	uint32_t resid;
	uint16_t status_qualifier;
	uint8_t status;
	uint8_t response;
	uint8_t sense[VIRTIO_SCSI_SENSE_SIZE];
} __attribute__((packed));		/* 108 bytes */

struct virtio_scsi_ctrl_tmf_req {
	uint32_t type;
	uint32_t subtype;
	uint8_t lun[8];
	uint64_t tag;
} __attribute__((packed));		/* 24 bytes */

struct virtio_scsi_ctrl_tmf_resp {
	uint8_t response;
} __attribute__((packed));

struct virtio_scsi_ctrl_an_req {
	uint32_t type;
	uint8_t lun[8];
	uint32_t event_requested;
} __attribute__((packed));		/* 16 bytes */

struct virtio_scsi_ctrl_an_resp {
	uint32_t event_actual;
	uint8_t response;
} __attribute__((packed));		/* 5 bytes */

struct virtio_scsi_event {
	uint32_t event;
	uint8_t lun[8];
	uint32_t reason;
} __attribute__((packed));		/* 16 bytes */

/* ---- SCSI status, sense keys, opcodes (SAM/SPC/SBC) ---- */
#define SAM_STAT_GOOD             0x00
#define SAM_STAT_CHECK_CONDITION  0x02
#define SAM_STAT_BUSY             0x08

#define SENSE_NO_SENSE            0x0
#define SENSE_NOT_READY           0x2
#define SENSE_MEDIUM_ERROR        0x3
#define SENSE_ILLEGAL_REQUEST     0x5
#define SENSE_UNIT_ATTENTION      0x6
#define SENSE_DATA_PROTECT        0x7
#define SENSE_ABORTED_COMMAND     0xb
#define SENSE_MISCOMPARE          0xe

#define OP_TEST_UNIT_READY        0x00
#define OP_REQUEST_SENSE          0x03
#define OP_READ_6                 0x08
#define OP_WRITE_6                0x0a
#define OP_INQUIRY                0x12
#define OP_MODE_SELECT_6          0x15
#define OP_MODE_SENSE_6           0x1a
#define OP_READ_CAPACITY_10       0x25
#define OP_READ_10                0x28
#define OP_WRITE_10               0x2a
#define OP_WRITE_VERIFY_10        0x2e
#define OP_VERIFY_10              0x2f
#define OP_SYNC_CACHE_10          0x35
#define OP_WRITE_SAME_10          0x41
#define OP_UNMAP                  0x42
#define OP_MODE_SELECT_10         0x55
#define OP_MODE_SENSE_10          0x5a
#define OP_READ_16                0x88
#define OP_WRITE_16               0x8a
#define OP_SYNC_CACHE_16          0x91
#define OP_WRITE_SAME_16          0x93
#define OP_SERVICE_ACTION_IN_16   0x9e
#define SAI_READ_CAPACITY_16      0x10
#define OP_REPORT_LUNS            0xa0
#define OP_READ_12                0xa8
#define OP_WRITE_12               0xaa

/* ---- driver ---- */
#define SCSI_MAX_REQQ    (VQ_MAX - 2)	/* request queues: device 2.., slots 2.. */
#define SCSI_CTX_MAX     64		/* requests in flight, all queues together */
#define SCSI_EVENT_BUFS  4
#define SCSI_MAX_BUFS    64		/* data descriptors per request */

/* One request: the device-visible headers plus driver bookkeeping. */
struct scsi_ctx {
	union {
		struct virtio_scsi_cmd_req cmd;
		struct virtio_scsi_ctrl_tmf_req tmf;
		struct virtio_scsi_ctrl_an_req an;
		uint8_t raw[64];
	} req;
	union {
		struct virtio_scsi_cmd_resp cmd;
		struct virtio_scsi_ctrl_tmf_resp tmf;
		struct virtio_scsi_ctrl_an_resp an;
		uint8_t raw[128];
	} resp;
	/* driver side */
	uint64_t tag;
	uint32_t used_len;
	uint16_t head, ndesc;
	uint8_t qslot, busy, done, pad;
} __attribute__((aligned(64)));

struct vscsi {
	struct vdev vd;
	/* device config */
	uint32_t num_queues, seg_max, max_sectors, cmd_per_lun, event_info_size;
	uint32_t sense_size, cdb_size, max_lun;
	uint16_t max_channel, max_target;
	uint32_t sense_size_set, cdb_size_set;	/* read back after writing */
	unsigned nreq;				/* request queues set up */
	unsigned target;			/* target addressed (param target, 0) */
	unsigned events_posted;
	uint64_t next_tag;
	int poll;				/* poll=1: spin instead of halting */
};

extern struct vscsi vscsi;

/* Driver slots: 0 controlq, 1 eventq, 2 + i request queue i. */
static inline struct vq *vscsi_ctrlq(struct vscsi *s) { return &s->vd.q[0]; }
static inline struct vq *vscsi_eventq(struct vscsi *s) { return &s->vd.q[1]; }
static inline struct vq *vscsi_reqq(struct vscsi *s, unsigned i) { return &s->vd.q[2 + i]; }

/* The outcome of one command, sense decoded (fixed or descriptor format). */
struct scsi_res {
	uint8_t response, status;
	uint32_t sense_len, resid, used_len;
	uint8_t sense_code;			/* 0x70..0x73, 0 if no sense */
	uint8_t key, asc, ascq;
	uint8_t sense[VIRTIO_SCSI_SENSE_SIZE];
};

/* A command to build: CDB plus data buffers (out: device reads). */
struct scsi_cmd {
	unsigned lun;
	const uint8_t *cdb;
	unsigned cdb_len;
	const struct vbuf *bufs;		/* data-out first, then data-in */
	unsigned nbufs;
};

const char *vscsi_find(struct vscsi *s);
const char *vscsi_init(struct vscsi *s);	/* reset .. DRIVER_OK, events posted */
const char *vscsi_open(void);			/* irq setup + find + init + lines */

void scsi_lun_bytes(const struct vscsi *s, unsigned lun, uint8_t out[8]);

/* Async: returns a context index (>= 0) or -1 (no context/descriptors). Not
 * privileged: also runs in ring 3 (the bench loop). */
int scsi_submit(struct vscsi *s, unsigned rq, const struct scsi_cmd *c);
/* Raw chain of n buffers on queue slot qslot with context ctx's headers. */
int scsi_ctx_alloc(struct vscsi *s);
void scsi_ctx_free(int ctx);
struct scsi_ctx *scsi_ctx(int ctx);
int scsi_chain(struct vscsi *s, unsigned qslot, int ctx, const struct vbuf *bufs,
	       unsigned n, int publish);
/* Consumes the used entries of a queue slot; returns how many, -1 on a bad id. */
int scsi_reap(struct vscsi *s, unsigned qslot);
unsigned scsi_free_descs(unsigned qslot);
/* Waits (halting, or polling with poll=1) until ctx is done. CPL0. */
const char *scsi_wait(struct vscsi *s, int ctx);
void scsi_result(int ctx, struct scsi_res *res);

/* Sync helpers (request queue 0 unless noted). */
const char *scsi_exec_q(struct vscsi *s, unsigned rq, const struct scsi_cmd *c,
			struct scsi_res *res);
const char *scsi_exec(struct vscsi *s, const struct scsi_cmd *c, struct scsi_res *res);
/* As scsi_exec, but a UNIT ATTENTION is printed (scsi-ua) and retried once. */
const char *scsi_exec_ua(struct vscsi *s, const struct scsi_cmd *c, struct scsi_res *res);
/* TMF / AN on the control queue */
const char *scsi_tmf(struct vscsi *s, uint32_t subtype, unsigned lun, uint64_t tag,
		     uint8_t *response);
int scsi_tmf_submit(struct vscsi *s, uint32_t subtype, unsigned lun, uint64_t tag);
const char *scsi_an_query(struct vscsi *s, unsigned lun, uint32_t events,
			  uint8_t *response, uint32_t *actual);

void scsi_decode_sense(struct scsi_res *r);
unsigned vscsi_events(struct vscsi *s);	/* prints + reposts returned events */

/* big-endian helpers */
static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, v >> 32);
	put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t get_be16(const uint8_t *p) { return p[0] << 8 | p[1]; }
static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}
static inline uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

#endif
