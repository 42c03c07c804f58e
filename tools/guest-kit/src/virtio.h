/*
 * guest-kit: virtio-pci (modern, virtio 1.x) transport, split virtqueues and
 * a virtio-blk driver (virtio.c); the virtio-net driver is in net.h / vnet.c.
 * Layouts follow the virtio 1.2 specification.
 */
#ifndef GUEST_KIT_VIRTIO_H
#define GUEST_KIT_VIRTIO_H

#include "kit.h"

/* ---- PCI ids ---- */
#define VIRTIO_PCI_VENDOR        0x1af4
#define VIRTIO_PCI_BLK_MODERN    0x1042	/* 0x1040 + device type 2 */
#define VIRTIO_PCI_BLK_TRANS     0x1001	/* transitional */

/* ---- PCI config space ---- */
#define PCI_COMMAND              0x04
#define PCI_COMMAND_MEMORY       (1u << 1)
#define PCI_COMMAND_MASTER       (1u << 2)
#define PCI_COMMAND_INTX_DISABLE (1u << 10)
#define PCI_STATUS               0x06
#define PCI_STATUS_CAP_LIST      (1u << 4)
#define PCI_CAP_PTR              0x34
#define PCI_CAP_ID_VNDR          0x09
#define PCI_CAP_ID_MSIX          0x11

/* MSI-X capability and table */
#define MSIX_CTRL                2		/* u16 message control */
#define MSIX_CTRL_ENABLE         (1u << 15)
#define MSIX_CTRL_FMASK          (1u << 14)
#define MSIX_TABLE               4		/* u32 offset | BIR */
#define MSIX_PBA                 8		/* u32 offset | BIR */
#define MSIX_ENTRY_SIZE          16
#define MSIX_ENTRY_ADDR_LO       0
#define MSIX_ENTRY_ADDR_HI       4
#define MSIX_ENTRY_DATA          8
#define MSIX_ENTRY_CTRL          12
#define MSIX_ENTRY_CTRL_MASK     1u

/* virtio vendor capability (struct virtio_pci_cap) */
#define VCAP_CFG_TYPE            3
#define VCAP_BAR                 4
#define VCAP_OFFSET              8
#define VCAP_LENGTH              12
#define VCAP_NOTIFY_MULT         16
#define VIRTIO_PCI_CAP_COMMON    1
#define VIRTIO_PCI_CAP_NOTIFY    2
#define VIRTIO_PCI_CAP_ISR       3
#define VIRTIO_PCI_CAP_DEVICE    4

/* struct virtio_pci_common_cfg */
#define VCOMMON_DFSELECT         0x00	/* u32 */
#define VCOMMON_DF               0x04	/* u32 */
#define VCOMMON_GFSELECT         0x08	/* u32 */
#define VCOMMON_GF               0x0c	/* u32 */
#define VCOMMON_MSIX             0x10	/* u16 */
#define VCOMMON_NUMQ             0x12	/* u16 */
#define VCOMMON_STATUS           0x14	/* u8 */
#define VCOMMON_CFGGEN           0x15	/* u8 */
#define VCOMMON_Q_SELECT         0x16	/* u16 */
#define VCOMMON_Q_SIZE           0x18	/* u16 */
#define VCOMMON_Q_MSIX           0x1a	/* u16 */
#define VCOMMON_Q_ENABLE         0x1c	/* u16 */
#define VCOMMON_Q_NOFF           0x1e	/* u16 */
#define VCOMMON_Q_DESC           0x20	/* u64 as two u32 */
#define VCOMMON_Q_DRIVER         0x28
#define VCOMMON_Q_DEVICE         0x30
#define VIRTIO_MSI_NO_VECTOR     0xffff

/* device status */
#define VSTAT_ACKNOWLEDGE        1
#define VSTAT_DRIVER             2
#define VSTAT_DRIVER_OK          4
#define VSTAT_FEATURES_OK        8
#define VSTAT_NEEDS_RESET        0x40
#define VSTAT_FAILED             0x80

/* feature bits */
#define VIRTIO_BLK_F_SEG_MAX     2
#define VIRTIO_BLK_F_RO          5
#define VIRTIO_BLK_F_BLK_SIZE    6
#define VIRTIO_BLK_F_FLUSH       9
#define VIRTIO_BLK_F_MQ          12
#define VIRTIO_BLK_F_DISCARD     13
#define VIRTIO_BLK_F_WRITE_ZEROES 14
#define VIRTIO_F_INDIRECT_DESC   28
#define VIRTIO_F_EVENT_IDX       29
#define VIRTIO_F_VERSION_1       32
#define FEAT(b)                  (1ull << (b))

/* struct virtio_blk_config */
#define VBLK_CFG_CAPACITY        0	/* u64 */
#define VBLK_CFG_SEG_MAX         12	/* u32 */
#define VBLK_CFG_BLK_SIZE        20	/* u32 */
#define VBLK_CFG_NUM_QUEUES      34	/* u16 */
#define VBLK_CFG_MAX_DISCARD_SECTORS 36
#define VBLK_CFG_MAX_DISCARD_SEG 40
#define VBLK_CFG_DISCARD_ALIGN   44
#define VBLK_CFG_MAX_WZ_SECTORS  48
#define VBLK_CFG_MAX_WZ_SEG      52
#define VBLK_CFG_WZ_MAY_UNMAP    56	/* u8 */

/* requests */
#define VIRTIO_BLK_T_IN          0
#define VIRTIO_BLK_T_OUT         1
#define VIRTIO_BLK_T_FLUSH       4
#define VIRTIO_BLK_T_GET_ID      8
#define VIRTIO_BLK_T_DISCARD     11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK          0
#define VIRTIO_BLK_S_IOERR       1
#define VIRTIO_BLK_S_UNSUPP      2
#define VIRTIO_BLK_WZ_UNMAP      1u
#define VIRTIO_BLK_ID_BYTES      20
#define SECTOR_SIZE              512

/* ---- split virtqueue ---- */
#define VRING_DESC_F_NEXT        1
#define VRING_DESC_F_WRITE       2
#define VRING_DESC_F_INDIRECT    4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY   1

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

#define VQ_MAX_SIZE  256		/* largest queue size the driver uses */
#define VQ_MAX       VEC_VIRTIO_QMAX	/* queues (one MSI-X vector each) */
#define VQ_MAX_SLOTS (VQ_MAX_SIZE / 3)
#define SLOT_IND_MAX 4			/* indirect entries per slot */

/* Per-request DMA memory: header, discard/write-zeroes segment, status
 * byte and this slot's indirect table. Slot s owns descriptors 3s..3s+2. */
struct blk_slot {
	uint32_t type;			/* struct virtio_blk_outhdr */
	uint32_t ioprio;
	uint64_t sector;
	uint64_t seg_sector;		/* struct virtio_blk_discard_write_zeroes */
	uint32_t seg_num;
	uint32_t seg_flags;
	volatile uint8_t status;
	uint8_t pad[31];
	struct vring_desc ind[SLOT_IND_MAX];
} __attribute__((aligned(64)));

/*
 * One split virtqueue. `index` is the device's queue number (queue_select,
 * the doorbell value); `slot` is the driver's: it picks the ring memory,
 * MSI-X table entry 1 + slot and IDT vector 0x50 + slot. The blk driver
 * uses slot == index; virtio-net's control queue does not.
 */
struct vq {
	unsigned index, slot, size, nslots;
	const char *tag;		/* prefix of the timeout line ("blk", "net") */
	int event_idx;			/* VIRTIO_F_EVENT_IDX negotiated */
	volatile struct vring_desc *desc;
	volatile uint16_t *avail;	/* [0] flags, [1] idx, [2..] ring, then used_event */
	volatile uint8_t *used;		/* flags u16, idx u16, ring, avail_event u16 */
	uintptr_t notify;		/* 16-bit doorbell address */
	uint8_t vector;			/* IDT vector (0x50 + slot) */
	uint16_t avail_idx;		/* next avail->idx value to publish */
	uint16_t kicked_idx;		/* avail_idx at the last notify decision */
	uint16_t last_used;		/* next used entry to consume */
	struct blk_slot *slots;		/* virtio-blk requests (see blk_submit) */
	uint8_t busy[VQ_MAX_SLOTS];
	uint32_t notifies;		/* doorbell writes */
	unsigned irq_snap;		/* vq_arm: interrupt count when armed */
	uint8_t armed, need_irq;	/* vq_arm state for vq_wait */
};

struct vbuf {
	uint64_t addr;
	uint32_t len;
	int write;			/* device writes (VRING_DESC_F_WRITE) */
};

/* A virtio-pci (modern) function: the transport, independent of the device type. */
struct vdev {
	const char *tag;		/* "blk" / "net": diagnostic line prefix */
	unsigned bus, dev, fn;
	uint16_t device_id;
	uintptr_t common, isr, devcfg, notify_base;
	uint32_t notify_mult, notify_len;
	unsigned msix_cap, msix_size;
	uintptr_t msix_table, msix_pba;
	uint64_t dev_features, drv_features;
	int event_idx;
	unsigned nq;			/* queues set up: q[0..nq-1] */
	unsigned qsize_param;		/* upper bound for queue sizes */
	struct vq q[VQ_MAX];
};

static inline int vdev_has(const struct vdev *d, unsigned bit)
{
	return (d->drv_features >> bit) & 1;
}

struct vblk {
	struct vdev vd;
	uint64_t capacity;
	uint32_t blk_size, seg_max;
	uint32_t max_discard_sectors, max_discard_seg, discard_align;
	uint32_t max_wz_sectors, max_wz_seg;
	uint8_t wz_may_unmap;
	unsigned max_queues;		/* what the device offers (MQ aware) */
	int indirect_ok, use_indirect, read_only;
};

extern struct vblk vblk;

static inline int vblk_has(const struct vblk *b, unsigned bit)
{
	return vdev_has(&b->vd, bit);
}

/* transport (any virtio-pci modern device) */
const char *vdev_find(struct vdev *d, uint16_t modern_id, uint16_t trans_id,
		      const char *none);
const char *vdev_reset(struct vdev *d);
/* reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 required), FEATURES_OK */
const char *vdev_negotiate(struct vdev *d, uint64_t want);
/* MSI-X (n + 1 entries), msix_config, then queue slot k = device queue index[k] */
const char *vdev_setup_queues(struct vdev *d, const unsigned *index, unsigned n);
void vdev_driver_ok(struct vdev *d);
const char *vdev_fail(struct vdev *d, const char *why);	/* sets FAILED */
uint8_t vdev_status(const struct vdev *d);
uint8_t vdev_cfg_generation(const struct vdev *d);
void vdev_set_bus_master(const struct vdev *d, int on);
uintptr_t msix_entry(const struct vdev *d, unsigned entry);
int msix_pending(const struct vdev *d, unsigned entry);

/* LAPIC + watchdog tick (tick-ms), sti: what the virtio waits need */
void virtio_irq_setup(void);

/* virtio-blk setup */
const char *vblk_find(struct vblk *b);
const char *vblk_init(struct vblk *b, unsigned want_queues);	/* 0: all */
const char *vblk_open(unsigned want_queues);	/* find + init + info lines */

/* virtqueue */
void vq_publish(struct vq *q, uint16_t head);
void vq_kick(struct vq *q, int force);
void vq_arm(struct vq *q);
void vq_set_interrupts(struct vq *q, int on);
uint16_t vq_used_idx(const struct vq *q);
int vq_pop(struct vq *q, uint32_t *id, uint32_t *len);	/* 1 if an entry was there */
int vq_reap(struct vq *q, uint32_t *len);	/* blk slot, or -1 if none */
unsigned vq_pending(const struct vq *q);	/* used entries not consumed */
void vq_peek(const struct vq *q, unsigned ahead, uint32_t *id, uint32_t *len);
int vq_ready(const struct vq *q);	/* used entry there, and its owed interrupt */
const char *vq_wait(struct vq *q);
const char *vq_timeout_reason(const struct vq *q);
unsigned vq_irqs(const struct vq *q);

/* requests */
int blk_submit_bufs(struct vq *q, unsigned slot, const struct vbuf *bufs, unsigned n);
int blk_submit(struct vq *q, unsigned slot, uint32_t type, uint64_t sector,
	       void *data, uint32_t len, int dev_writes);
const char *blk_sync(struct vq *q, uint32_t type, uint64_t sector, void *data,
		     uint32_t len, int dev_writes, uint8_t *status);
const char *blk_rw(struct vq *q, int write, uint64_t lba, void *buf, unsigned sectors);
const char *blk_flush(struct vq *q);
const char *blk_get_id(struct vq *q, char id[VIRTIO_BLK_ID_BYTES]);
const char *blk_zero_or_discard(struct vq *q, uint32_t type, uint64_t lba,
				uint32_t sectors, uint32_t flags, uint8_t *status);

#endif
