/*
 * guest-kit: virtio-pci modern transport, split virtqueues and virtio-blk
 * requests (virtio 1.2: 4.1 PCI transport, 2.7 split virtqueues, 5.2 block).
 * The transport part (vdev_*, vq_*) serves any device type; virtio-net's
 * driver (vnet.c) uses it too.
 *
 * Everything the device reads or writes lives in .bss (identity mapped, so
 * virtual = physical). Queue slot k (the driver's numbering; see struct vq)
 * uses MSI-X table entry 1 + k with IDT vector 0x50 + k; the config vector
 * is entry 0 with IDT vector 0x4f.
 */
#include "virtio.h"

struct vblk vblk;

/* ---- ring memory: fixed per-queue areas sized for VQ_MAX_SIZE ---- */
static struct vring_desc ring_desc[VQ_MAX][VQ_MAX_SIZE] __attribute__((aligned(4096)));
static uint16_t ring_avail[VQ_MAX][3 + VQ_MAX_SIZE + 1] __attribute__((aligned(64)));
static uint8_t ring_used[VQ_MAX][6 + 8 * VQ_MAX_SIZE + 2] __attribute__((aligned(64)));
static struct blk_slot slot_mem[VQ_MAX][VQ_MAX_SLOTS];

/* ---- MMIO helpers (one access of the named width each) ---- */
static inline uint8_t r8(uintptr_t a) { return MMIO(uint8_t, a); }
static inline uint16_t r16(uintptr_t a) { return MMIO(uint16_t, a); }
static inline uint32_t r32(uintptr_t a) { return MMIO(uint32_t, a); }
static inline void w8(uintptr_t a, uint8_t v) { MMIO(uint8_t, a) = v; }
static inline void w16(uintptr_t a, uint16_t v) { MMIO(uint16_t, a) = v; }
static inline void w32(uintptr_t a, uint32_t v) { MMIO(uint32_t, a) = v; }

static uint8_t cfg8(const struct vdev *b, unsigned off)
{
	return pci_read8(b->bus, b->dev, b->fn, off);
}
static uint16_t cfg16(const struct vdev *b, unsigned off)
{
	return pci_read16(b->bus, b->dev, b->fn, off);
}
static uint32_t cfg32(const struct vdev *b, unsigned off)
{
	return pci_read32(b->bus, b->dev, b->fn, off);
}

/* ---- PCI: BARs and capabilities ---- */
#define LIMIT_4G 0x100000000ull

/* The address firmware/VMM programmed into a memory BAR (never changed). */
static const char *bar_address(const struct vdev *b, unsigned bar, uint64_t *out)
{
	if (bar > 5)
		return "bad-bar-index";
	uint32_t lo = cfg32(b, 0x10 + 4 * bar);
	if (lo & 1)
		return "io-bar-unsupported";
	uint64_t a = lo & ~0xfu;
	if (((lo >> 1) & 3) == 2) {	/* 64-bit: the next slot is the high half */
		if (bar == 5)
			return "bad-bar-index";
		a |= (uint64_t)cfg32(b, 0x14 + 4 * bar) << 32;
	}
	if (!a)
		return "bar-unassigned";
	if (a >= LIMIT_4G)
		return "bar-above-4g";
	*out = a;
	return NULL;
}

static const char *region(const struct vdev *b, unsigned bar, uint32_t off,
			  uint32_t len, uintptr_t *out)
{
	uint64_t base;
	const char *r = bar_address(b, bar, &base);
	if (r)
		return r;
	if (base + off + len > LIMIT_4G)
		return "bar-above-4g";
	*out = (uintptr_t)(base + off);
	return NULL;
}

/* Walks the capability list: the first virtio structure of each type with a
 * valid BAR wins (spec 4.1.4), plus the MSI-X capability. */
static const char *parse_caps(struct vdev *b)
{
	int have_common = 0, have_notify = 0, have_isr = 0, have_dev = 0;
	const char *r;

	b->msix_cap = 0;
	if (!(cfg16(b, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		return "no-capabilities";
	unsigned ptr = cfg8(b, PCI_CAP_PTR) & 0xfc;
	for (unsigned n = 0; ptr && n < 48; n++) {
		uint8_t id = cfg8(b, ptr);
		if (id == PCI_CAP_ID_MSIX && !b->msix_cap)
			b->msix_cap = ptr;
		if (id == PCI_CAP_ID_VNDR && cfg8(b, ptr + 2) >= 16) {
			uint8_t type = cfg8(b, ptr + VCAP_CFG_TYPE);
			uint8_t bar = cfg8(b, ptr + VCAP_BAR);
			uint32_t off = cfg32(b, ptr + VCAP_OFFSET);
			uint32_t len = cfg32(b, ptr + VCAP_LENGTH);
			if (bar > 5)		/* reserved: ignore */
				goto next;
			switch (type) {
			case VIRTIO_PCI_CAP_COMMON:
				if (have_common++)
					break;
				if (len < 0x38)
					return "common-cfg-too-short";
				if ((r = region(b, bar, off, len, &b->common)))
					return r;
				break;
			case VIRTIO_PCI_CAP_NOTIFY:
				if (have_notify++)
					break;
				if (cfg8(b, ptr + 2) < 20)
					return "notify-cap-too-short";
				b->notify_mult = cfg32(b, ptr + VCAP_NOTIFY_MULT);
				if ((r = region(b, bar, off, len, &b->notify_base)))
					return r;
				b->notify_len = len;
				break;
			case VIRTIO_PCI_CAP_ISR:
				if (have_isr++)
					break;
				if ((r = region(b, bar, off, len, &b->isr)))
					return r;
				break;
			case VIRTIO_PCI_CAP_DEVICE:
				if (have_dev++)
					break;
				if ((r = region(b, bar, off, len, &b->devcfg)))
					return r;
				break;
			default:		/* PCI_CFG, shared memory, ...: unused */
				break;
			}
		}
next:
		ptr = cfg8(b, ptr + 1) & 0xfc;
	}
	if (!have_common)
		return "no-common-cfg";
	if (!have_notify)
		return "no-notify-cfg";
	if (!have_dev)
		return "no-device-cfg";
	if (!have_isr)
		return "no-isr-cfg";
	if (!b->msix_cap)
		return "no-msix";

	uint32_t t = cfg32(b, b->msix_cap + MSIX_TABLE);
	uint32_t p = cfg32(b, b->msix_cap + MSIX_PBA);
	b->msix_size = (cfg16(b, b->msix_cap + MSIX_CTRL) & 0x7ff) + 1;
	if ((r = region(b, t & 7, t & ~7u, b->msix_size * MSIX_ENTRY_SIZE, &b->msix_table)))
		return r;
	if ((r = region(b, p & 7, p & ~7u, (b->msix_size + 63) / 64 * 8, &b->msix_pba)))
		return r;
	return NULL;
}

/* dev=N picks the Nth function (bus 0) with one of the two device ids that
 * has the modern capabilities. */
const char *vdev_find(struct vdev *b, uint16_t modern_id, uint16_t trans_id,
		      const char *none)
{
	unsigned want = param("dev", 0), seen = 0;

	for (unsigned d = 0; d < 32; d++) {
		if (pci_read16(0, d, 0, 0x00) == 0xffff)
			continue;
		unsigned nfn = (pci_read8(0, d, 0, 0x0e) & 0x80) ? 8 : 1;
		for (unsigned f = 0; f < nfn; f++) {
			if (pci_read16(0, d, f, 0x00) != VIRTIO_PCI_VENDOR)
				continue;
			uint16_t id = pci_read16(0, d, f, 0x02);
			if (id != modern_id && id != trans_id)
				continue;
			b->bus = 0;
			b->dev = d;
			b->fn = f;
			b->device_id = id;
			const char *r = parse_caps(b);
			if (r && id == trans_id)
				continue;	/* legacy-only transitional device */
			if (seen++ != want)
				continue;
			if (r)
				return r;
			uint16_t cmd = cfg16(b, PCI_COMMAND);
			pci_write16(0, d, f, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY |
				    PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
			return NULL;
		}
	}
	return none;
}

void vdev_set_bus_master(const struct vdev *b, int on)
{
	uint16_t cmd = cfg16(b, PCI_COMMAND);
	cmd = on ? cmd | PCI_COMMAND_MASTER : cmd & ~PCI_COMMAND_MASTER;
	pci_write16(b->bus, b->dev, b->fn, PCI_COMMAND, cmd);
}

/* ---- MSI-X ---- */
uintptr_t msix_entry(const struct vdev *b, unsigned entry)
{
	return b->msix_table + entry * MSIX_ENTRY_SIZE;
}

int msix_pending(const struct vdev *b, unsigned entry)
{
	return (r32(b->msix_pba + entry / 32 * 4) >> (entry % 32)) & 1;
}

static uint8_t entry_vector(unsigned entry)
{
	return entry == 0 ? VEC_VIRTIO_CFG : VEC_VIRTIO_Q0 + entry - 1;
}

/* Entries 0..nvec-1 -> LAPIC of this CPU, fixed delivery, edge; unmasked. */
static const char *msix_setup(struct vdev *b, unsigned nvec)
{
	unsigned c = b->msix_cap + MSIX_CTRL;
	uint16_t ctrl = cfg16(b, c);

	if (b->msix_size < nvec)
		return "msix-table-too-small";
	pci_write16(b->bus, b->dev, b->fn, c, ctrl | MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK);
	uint32_t addr = (uint32_t)LAPIC_BASE | lapic_id() << 12;
	for (unsigned e = 0; e < nvec; e++) {
		uintptr_t a = msix_entry(b, e);
		w32(a + MSIX_ENTRY_CTRL, MSIX_ENTRY_CTRL_MASK);
		w32(a + MSIX_ENTRY_ADDR_LO, addr);
		w32(a + MSIX_ENTRY_ADDR_HI, 0);
		w32(a + MSIX_ENTRY_DATA, entry_vector(e));
		w32(a + MSIX_ENTRY_CTRL, 0);
	}
	pci_write16(b->bus, b->dev, b->fn, c, (ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK);
	return NULL;
}

/* ---- device status / reset ---- */
uint8_t vdev_status(const struct vdev *d)
{
	return r8(d->common + VCOMMON_STATUS);
}

uint8_t vdev_cfg_generation(const struct vdev *d)
{
	return r8(d->common + VCOMMON_CFGGEN);
}

static void set_status(const struct vdev *d, uint8_t bits)
{
	w8(d->common + VCOMMON_STATUS, vdev_status(d) | bits);
}

/* Bounded by the watchdog tick and, should no tick arrive, a read count. */
static unsigned timeout_ticks(void)
{
	return ms_to_ticks(param("timeout-ms", 10000));
}

const char *vdev_reset(struct vdev *d)
{
	w8(d->common + VCOMMON_STATUS, 0);
	unsigned t0 = ticks();
	for (unsigned n = 0; vdev_status(d) != 0; n++)
		if (ticks() - t0 > timeout_ticks() || n > 10000000)
			return "reset-timeout";
	return NULL;
}

const char *vdev_fail(struct vdev *d, const char *why)
{
	set_status(d, VSTAT_FAILED);
	return why;
}

/* Spec 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, feature negotiation
 * (VERSION_1 is required), FEATURES_OK and its read-back. */
const char *vdev_negotiate(struct vdev *d, uint64_t want)
{
	uintptr_t c = d->common;
	const char *r = vdev_reset(d);
	if (r)
		return r;
	set_status(d, VSTAT_ACKNOWLEDGE);
	set_status(d, VSTAT_DRIVER);

	w32(c + VCOMMON_DFSELECT, 0);
	uint64_t lo = r32(c + VCOMMON_DF);
	w32(c + VCOMMON_DFSELECT, 1);
	uint64_t hi = r32(c + VCOMMON_DF);
	d->dev_features = lo | hi << 32;
	if (!(d->dev_features & FEAT(VIRTIO_F_VERSION_1)))
		return vdev_fail(d, "no-version-1");

	d->drv_features = d->dev_features & (want | FEAT(VIRTIO_F_VERSION_1));
	w32(c + VCOMMON_GFSELECT, 0);
	w32(c + VCOMMON_GF, (uint32_t)d->drv_features);
	w32(c + VCOMMON_GFSELECT, 1);
	w32(c + VCOMMON_GF, (uint32_t)(d->drv_features >> 32));
	set_status(d, VSTAT_FEATURES_OK);
	if (!(vdev_status(d) & VSTAT_FEATURES_OK))
		return vdev_fail(d, "features-not-ok");
	d->event_idx = vdev_has(d, VIRTIO_F_EVENT_IDX);
	return NULL;
}

/* ---- queue setup ---- */
static const char *setup_queue(struct vdev *d, unsigned k, unsigned index)
{
	struct vq *q = &d->q[k];
	uintptr_t c = d->common;

	w16(c + VCOMMON_Q_SELECT, index);
	unsigned max = r16(c + VCOMMON_Q_SIZE);
	if (!max)
		return "queue-unavailable";
	if (r16(c + VCOMMON_Q_ENABLE))
		return "queue-enabled-after-reset";
	unsigned size = max;
	if (size > d->qsize_param)
		size = d->qsize_param;
	if (size > VQ_MAX_SIZE)
		size = VQ_MAX_SIZE;
	while (size & (size - 1))	/* split queues: a power of 2 */
		size &= size - 1;
	if (size < 4)
		return "queue-size-too-small";

	memset(q, 0, sizeof(*q));
	q->index = index;
	q->slot = k;
	q->size = size;
	q->nslots = size / 3;
	q->tag = d->tag;
	q->event_idx = d->event_idx;
	q->desc = ring_desc[k];
	q->avail = ring_avail[k];
	q->used = ring_used[k];
	q->slots = slot_mem[k];
	q->vector = VEC_VIRTIO_Q0 + k;
	memset(ring_desc[k], 0, sizeof(ring_desc[k]));
	memset(ring_avail[k], 0, sizeof(ring_avail[k]));
	memset(ring_used[k], 0, sizeof(ring_used[k]));

	uint64_t dsc = (uintptr_t)q->desc, a = (uintptr_t)q->avail, u = (uintptr_t)q->used;
	w16(c + VCOMMON_Q_SIZE, size);
	w32(c + VCOMMON_Q_DESC, (uint32_t)dsc);
	w32(c + VCOMMON_Q_DESC + 4, (uint32_t)(dsc >> 32));
	w32(c + VCOMMON_Q_DRIVER, (uint32_t)a);
	w32(c + VCOMMON_Q_DRIVER + 4, (uint32_t)(a >> 32));
	w32(c + VCOMMON_Q_DEVICE, (uint32_t)u);
	w32(c + VCOMMON_Q_DEVICE + 4, (uint32_t)(u >> 32));
	w16(c + VCOMMON_Q_MSIX, 1 + k);
	if (r16(c + VCOMMON_Q_MSIX) != 1 + k)
		return "queue-msix-vector-rejected";
	uint32_t noff = r16(c + VCOMMON_Q_NOFF);
	uint64_t off = (uint64_t)noff * d->notify_mult;
	if (off + 2 > d->notify_len)
		return "notify-off-out-of-range";
	q->notify = d->notify_base + off;
	w16(c + VCOMMON_Q_ENABLE, 1);
	return NULL;
}

/* Spec 3.1.1 step 7 (the transport part): MSI-X with n + 1 entries, the
 * config vector, then slot k = device queue index[k]. On failure the device
 * is marked FAILED. */
const char *vdev_setup_queues(struct vdev *d, const unsigned *index, unsigned n)
{
	const char *r;

	if (n > VQ_MAX)
		return vdev_fail(d, "too-many-queues");
	if ((r = msix_setup(d, n + 1)))
		return vdev_fail(d, r);
	w16(d->common + VCOMMON_MSIX, 0);
	if (r16(d->common + VCOMMON_MSIX) != 0)
		return vdev_fail(d, "config-msix-vector-rejected");
	for (unsigned k = 0; k < n; k++)
		if ((r = setup_queue(d, k, index[k])))
			return vdev_fail(d, r);
	d->nq = n;
	return NULL;
}

void vdev_driver_ok(struct vdev *d)
{
	set_status(d, VSTAT_DRIVER_OK);
}

/* ---- virtio-blk: device config and initialisation ---- */
static void read_config(struct vblk *b)
{
	uintptr_t cfg = b->vd.devcfg;
	uint8_t gen;
	do {
		gen = vdev_cfg_generation(&b->vd);
		b->capacity = r32(cfg + VBLK_CFG_CAPACITY) |
			      (uint64_t)r32(cfg + VBLK_CFG_CAPACITY + 4) << 32;
		b->blk_size = vblk_has(b, VIRTIO_BLK_F_BLK_SIZE) ?
			      r32(cfg + VBLK_CFG_BLK_SIZE) : SECTOR_SIZE;
		b->seg_max = vblk_has(b, VIRTIO_BLK_F_SEG_MAX) ?
			     r32(cfg + VBLK_CFG_SEG_MAX) : 0;
		b->max_queues = vblk_has(b, VIRTIO_BLK_F_MQ) ?
				r16(cfg + VBLK_CFG_NUM_QUEUES) : 1;
		if (vblk_has(b, VIRTIO_BLK_F_DISCARD)) {
			b->max_discard_sectors = r32(cfg + VBLK_CFG_MAX_DISCARD_SECTORS);
			b->max_discard_seg = r32(cfg + VBLK_CFG_MAX_DISCARD_SEG);
			b->discard_align = r32(cfg + VBLK_CFG_DISCARD_ALIGN);
		}
		if (vblk_has(b, VIRTIO_BLK_F_WRITE_ZEROES)) {
			b->max_wz_sectors = r32(cfg + VBLK_CFG_MAX_WZ_SECTORS);
			b->max_wz_seg = r32(cfg + VBLK_CFG_MAX_WZ_SEG);
			b->wz_may_unmap = r8(cfg + VBLK_CFG_WZ_MAY_UNMAP);
		}
	} while (gen != vdev_cfg_generation(&b->vd));
}

const char *vblk_find(struct vblk *b)
{
	b->vd.tag = "blk";
	return vdev_find(&b->vd, VIRTIO_PCI_BLK_MODERN, VIRTIO_PCI_BLK_TRANS,
			 "no-virtio-blk");
}

/* Spec 3.1.1 initialisation; want_queues 0 means all the device offers. */
const char *vblk_init(struct vblk *b, unsigned want_queues)
{
	struct vdev *d = &b->vd;
	const char *r;

	/* param indirect: absent = negotiate, use direct chains; 1 = negotiate
	 * and use indirect tables; 0 = do not negotiate. */
	uint64_t ind = param("indirect", 2);
	uint64_t want = FEAT(VIRTIO_BLK_F_FLUSH) |
			FEAT(VIRTIO_BLK_F_BLK_SIZE) | FEAT(VIRTIO_BLK_F_SEG_MAX) |
			FEAT(VIRTIO_BLK_F_DISCARD) | FEAT(VIRTIO_BLK_F_WRITE_ZEROES) |
			FEAT(VIRTIO_BLK_F_MQ) | FEAT(VIRTIO_BLK_F_RO);
	if (param("event-idx", 1))
		want |= FEAT(VIRTIO_F_EVENT_IDX);
	if (!param("flush", 1))		/* a driver without FLUSH: write-through */
		want &= ~FEAT(VIRTIO_BLK_F_FLUSH);
	if (ind != 0)
		want |= FEAT(VIRTIO_F_INDIRECT_DESC);
	if ((r = vdev_negotiate(d, want)))
		return r;

	b->indirect_ok = vblk_has(b, VIRTIO_F_INDIRECT_DESC);
	b->use_indirect = b->indirect_ok && ind == 1;
	b->read_only = vblk_has(b, VIRTIO_BLK_F_RO);
	read_config(b);

	unsigned devq = r16(d->common + VCOMMON_NUMQ);
	if (b->max_queues > devq)
		b->max_queues = devq;
	if (b->max_queues > VQ_MAX)
		b->max_queues = VQ_MAX;
	if (!b->max_queues)
		return vdev_fail(d, "no-queues");
	unsigned nq = want_queues && want_queues < b->max_queues ? want_queues : b->max_queues;
	d->qsize_param = param("qsize", 64);

	unsigned index[VQ_MAX];
	for (unsigned i = 0; i < nq; i++)
		index[i] = i;
	if ((r = vdev_setup_queues(d, index, nq)))
		return r;
	vdev_driver_ok(d);
	return NULL;
}

/* Starts the LAPIC watchdog tick and enables interrupts (virtio waits halt). */
void virtio_irq_setup(void)
{
	lapic_enable();
	uint64_t tick = param("tick-ms", 10);
	lapic_timer_start(tick && tick <= 1000 ? tick : 10);
	sti();
}

const char *vblk_open(unsigned want_queues)
{
	struct vblk *b = &vblk;
	struct vdev *d = &b->vd;
	const char *r;

	virtio_irq_setup();
	if ((r = vblk_find(b)))
		return r;
	if ((r = vblk_init(b, want_queues)))
		return r;
	kprintf("blk: pci=00:%02x.%x device=0x%04x msix_vectors=%u queue_size=%u chains=%s dev_features=0x%llx\n",
		d->dev, d->fn, d->device_id, d->msix_size, d->q[0].size,
		b->use_indirect ? "indirect" : "direct",
		(unsigned long long)d->dev_features);
	kprintf("blk: capacity=%llu blk_size=%u features=0x%llx queues=%u\n",
		(unsigned long long)b->capacity, b->blk_size,
		(unsigned long long)d->drv_features, d->nq);
	return NULL;
}

/* ---- virtqueue operations (no privileged instructions except in
 * vq_wait: the others also run in ring 3) ---- */
static inline volatile uint16_t *used_idx_p(const struct vq *q)
{
	return (volatile uint16_t *)(q->used + 2);
}
static inline volatile struct vring_used_elem *used_ring(const struct vq *q)
{
	return (volatile struct vring_used_elem *)(q->used + 4);
}
static inline volatile uint16_t *avail_event_p(const struct vq *q)
{
	return (volatile uint16_t *)(q->used + 4 + 8 * q->size);
}
static inline volatile uint16_t *used_event_p(const struct vq *q)
{
	return &q->avail[2 + q->size];
}

uint16_t vq_used_idx(const struct vq *q)
{
	return *used_idx_p(q);
}

unsigned vq_irqs(const struct vq *q)
{
	return irq_count(q->vector);
}

void vq_publish(struct vq *q, uint16_t head)
{
	q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
	barrier();			/* x86 keeps stores in order */
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
}

/* Doorbell: a 16-bit store of the queue index (what KVM ioeventfds with
 * len 2 match), unless the device suppressed notifications. */
void vq_kick(struct vq *q, int force)
{
	mb();				/* avail idx visible before we read */
	uint16_t new = q->avail_idx, old = q->kicked_idx;
	int need;

	q->kicked_idx = new;
	if (force)
		need = 1;
	else if (q->event_idx)
		need = (uint16_t)(new - *avail_event_p(q) - 1) < (uint16_t)(new - old);
	else
		need = !(q->used[0] & VRING_USED_F_NO_NOTIFY);
	if (need) {
		MMIO(uint16_t, q->notify) = (uint16_t)q->index;
		q->notifies++;
	}
}

/* Interrupt suppression for polling loops: with EVENT_IDX a used_event one
 * behind the consumer is never crossed; without it, the avail flag. */
void vq_set_interrupts(struct vq *q, int on)
{
	if (q->event_idx)
		*used_event_p(q) = on ? q->last_used : (uint16_t)(q->last_used - 1);
	else
		q->avail[0] = on ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
	mb();
}

/*
 * Ask for an interrupt at the next used entry and remember whether one is
 * owed: if the used ring is empty after this, the device must interrupt for
 * the next entry it adds (spec 2.7.7 / 2.7.10), so vq_wait insists on it.
 */
void vq_arm(struct vq *q)
{
	vq_set_interrupts(q, 1);
	q->irq_snap = irq_count(q->vector);
	q->need_irq = *used_idx_p(q) == q->last_used;
	q->armed = 1;
}

int vq_pop(struct vq *q, uint32_t *id, uint32_t *len)
{
	if (*used_idx_p(q) == q->last_used)
		return 0;
	barrier();			/* x86 keeps loads in order */
	volatile struct vring_used_elem *e = &used_ring(q)[q->last_used & (q->size - 1)];
	*id = e->id;
	if (len)
		*len = e->len;
	q->last_used++;
	return 1;
}

/* Used entries of this queue that the driver has not consumed yet. */
unsigned vq_pending(const struct vq *q)
{
	return (uint16_t)(*used_idx_p(q) - q->last_used);
}

/* The peeked used entry `ahead` places after the next one (not consumed). */
void vq_peek(const struct vq *q, unsigned ahead, uint32_t *id, uint32_t *len)
{
	barrier();
	volatile struct vring_used_elem *e =
		&used_ring(q)[(uint16_t)(q->last_used + ahead) & (q->size - 1)];
	*id = e->id;
	*len = e->len;
}

int vq_reap(struct vq *q, uint32_t *len)
{
	uint32_t id;
	if (!vq_pop(q, &id, len))
		return -1;
	unsigned slot = id / 3;
	if (id % 3 || slot >= q->nslots || !q->busy[slot])
		return -2;
	q->busy[slot] = 0;
	return slot;
}

/* A used entry is there and, if vq_arm found the ring empty, the interrupt
 * the device owes for it has arrived. */
int vq_ready(const struct vq *q)
{
	return *used_idx_p(q) != q->last_used &&
	       (!q->need_irq || irq_count(q->vector) != q->irq_snap);
}

static char timeout_reason[VQ_MAX][20];

const char *vq_timeout_reason(const struct vq *q)
{
	char *s = timeout_reason[q->index];
	const char *pfx = "timeout-queue-";
	unsigned n = 0;
	while (*pfx)
		s[n++] = *pfx++;
	if (q->index >= 10)
		s[n++] = '0' + q->index / 10;
	s[n++] = '0' + q->index % 10;
	s[n] = '\0';
	return s;
}

/* Halts until a used entry is there (and the interrupt owed for it, see
 * vq_arm, has arrived), or the watchdog runs out. CPL0 only. */
const char *vq_wait(struct vq *q)
{
	unsigned t0 = ticks(), limit = timeout_ticks();

	if (!q->armed)
		vq_arm(q);
	q->armed = 0;
	cli();
	for (;;) {
		if (vq_ready(q))
			break;
		if (ticks() - t0 > limit) {
			int have = *used_idx_p(q) != q->last_used;
			sti();
			kprintf("%s: timeout queue=%u used_advanced=%u interrupts=%u\n",
				q->tag, q->index, have, irq_count(q->vector) - q->irq_snap);
			return vq_timeout_reason(q);
		}
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	sti();
	return NULL;
}

/* ---- virtio-blk requests ---- */
int blk_submit_bufs(struct vq *q, unsigned slot, const struct vbuf *bufs, unsigned n)
{
	if (slot >= q->nslots || q->busy[slot] || !n)
		return -1;
	struct blk_slot *s = &q->slots[slot];
	unsigned head = 3 * slot;

	if (vblk.use_indirect) {
		if (n > SLOT_IND_MAX)
			return -1;
		for (unsigned k = 0; k < n; k++) {
			s->ind[k].addr = bufs[k].addr;
			s->ind[k].len = bufs[k].len;
			s->ind[k].flags = (bufs[k].write ? VRING_DESC_F_WRITE : 0) |
					  (k + 1 < n ? VRING_DESC_F_NEXT : 0);
			s->ind[k].next = k + 1 < n ? k + 1 : 0;
		}
		q->desc[head].addr = (uintptr_t)s->ind;
		q->desc[head].len = n * sizeof(struct vring_desc);
		q->desc[head].flags = VRING_DESC_F_INDIRECT;
		q->desc[head].next = 0;
	} else {
		if (n > 3)
			return -1;
		for (unsigned k = 0; k < n; k++) {
			volatile struct vring_desc *d = &q->desc[head + k];
			d->addr = bufs[k].addr;
			d->len = bufs[k].len;
			d->flags = (bufs[k].write ? VRING_DESC_F_WRITE : 0) |
				   (k + 1 < n ? VRING_DESC_F_NEXT : 0);
			d->next = k + 1 < n ? head + k + 1 : 0;
		}
	}
	q->busy[slot] = 1;
	vq_publish(q, head);
	return 0;
}

/* Header (device-readable), optional data, status (device-writable). */
int blk_submit(struct vq *q, unsigned slot, uint32_t type, uint64_t sector,
	       void *data, uint32_t len, int dev_writes)
{
	if (slot >= q->nslots)
		return -1;
	struct blk_slot *s = &q->slots[slot];
	struct vbuf bufs[3];
	unsigned n = 0;

	s->type = type;
	s->ioprio = 0;
	s->sector = sector;
	s->status = 0xff;
	bufs[n++] = (struct vbuf){ (uintptr_t)s, 16, 0 };
	if (len)
		bufs[n++] = (struct vbuf){ (uintptr_t)data, len, dev_writes };
	bufs[n++] = (struct vbuf){ (uintptr_t)&s->status, 1, 1 };
	return blk_submit_bufs(q, slot, bufs, n);
}

/* One request on slot 0, waited for; *status gets the status byte. */
const char *blk_sync(struct vq *q, uint32_t type, uint64_t sector, void *data,
		     uint32_t len, int dev_writes, uint8_t *status)
{
	if (q->busy[0])
		return "slot-busy";
	vq_arm(q);
	if (blk_submit(q, 0, type, sector, data, len, dev_writes) < 0)
		return "submit-failed";
	vq_kick(q, 0);
	const char *r = vq_wait(q);
	if (r)
		return r;
	int slot = vq_reap(q, NULL);
	if (slot != 0)
		return "bad-used-id";
	*status = q->slots[0].status;
	return NULL;
}

static const char *expect_ok(uint32_t type, uint64_t lba, uint8_t st)
{
	if (st == VIRTIO_BLK_S_OK)
		return NULL;
	kprintf("blk: request type=%u lba=%llu status=%u\n", type,
		(unsigned long long)lba, st);
	return st == 0xff ? "status-not-written" : "bad-status";
}

const char *blk_rw(struct vq *q, int write, uint64_t lba, void *buf, unsigned sectors)
{
	uint32_t type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
	uint8_t st;
	const char *r = blk_sync(q, type, lba, buf, sectors * SECTOR_SIZE, !write, &st);
	return r ? r : expect_ok(type, lba, st);
}

const char *blk_flush(struct vq *q)
{
	uint8_t st;
	const char *r = blk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, &st);
	return r ? r : expect_ok(VIRTIO_BLK_T_FLUSH, 0, st);
}

const char *blk_get_id(struct vq *q, char id[VIRTIO_BLK_ID_BYTES])
{
	static char idbuf[VIRTIO_BLK_ID_BYTES] __attribute__((aligned(64)));
	uint8_t st;

	memset(idbuf, 0, sizeof(idbuf));
	const char *r = blk_sync(q, VIRTIO_BLK_T_GET_ID, 0, idbuf, sizeof(idbuf), 1, &st);
	if (!r)
		r = expect_ok(VIRTIO_BLK_T_GET_ID, 0, st);
	memcpy(id, idbuf, sizeof(idbuf));
	return r;
}

/* One segment (struct virtio_blk_discard_write_zeroes) per request. */
const char *blk_zero_or_discard(struct vq *q, uint32_t type, uint64_t lba,
				uint32_t sectors, uint32_t flags, uint8_t *status)
{
	struct blk_slot *s = &q->slots[0];
	s->seg_sector = lba;
	s->seg_num = sectors;
	s->seg_flags = flags;
	return blk_sync(q, type, 0, &s->seg_sector, 16, 0, status);
}
