/*
 * guest-kit: hostile-guest tests (test=hostile-*). Each one hands a device a
 * chain no correct driver sends, checks that the device reports
 * VIRTIO_CONFIG_S_NEEDS_RESET (with a configuration interrupt) while the VMM
 * keeps running, then resets the device, initialises it again and does one
 * good request.
 *
 *   hostile-blk  kind=zero-status|zero-data  at=0|oob
 *   hostile-blk  kind=full-indirect          a legal queue-size indirect table
 *   hostile-net  kind=tx-zero|rx-zero|ctrl-zero  at=0|oob
 *   hostile-scsi kind=zero-resp|zero-data    at=0|oob
 *   hostile-flood ios=N                      virtio-blk flooded, virtio-scsi I/O must go on
 *
 * at=0 puts the zero-length buffer at guest-physical 0 (RAM), at=oob far
 * outside RAM. Lines: "hostile dev=D kind=K at=A needs_reset=N config_irq=C",
 * then "hostile dev=D recovered=R".
 */
#include "virtio.h"
#include "net.h"
#include "scsi.h"

#define OOB_ADDR 0x7fff00000000ull
#define N VRING_DESC_F_NEXT
#define W VRING_DESC_F_WRITE

static uint8_t hbuf[VQ_MAX_SIZE * SECTOR_SIZE] __attribute__((aligned(4096)));
static struct vring_desc itable[VQ_MAX_SIZE] __attribute__((aligned(16)));

static void set_desc(volatile struct vring_desc *d, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

static const char *at_name(void)
{
	return param_str("at", "0");
}

static uint64_t at_addr(void)
{
	return kstrcmp(at_name(), "oob") ? 0 : OOB_ADDR;
}

static void publish_head0(struct vq *q)
{
	vq_arm(q);
	vq_publish(q, 0);
	vq_kick(q, 1);
}

/* Waits for NEEDS_RESET (hostile-ms), then a moment for the config
 * interrupt; prints the result line. cfg0: config interrupts before. */
static unsigned watch_needs_reset(const char *dev, const char *kind, struct vdev *d,
				  unsigned cfg0, unsigned *config_irq)
{
	unsigned limit = ms_to_ticks(param("hostile-ms", 2000));
	unsigned t0 = ticks(), needs_reset = 0;
	while (ticks() - t0 <= limit) {
		if (vdev_status(d) & VSTAT_NEEDS_RESET) {
			needs_reset = 1;
			break;
		}
	}
	if (needs_reset) {
		unsigned t1 = ticks();
		cli();
		while (irq_count(VEC_VIRTIO_CFG) == cfg0 && ticks() - t1 <= ms_to_ticks(500))
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		sti();
	}
	*config_irq = irq_count(VEC_VIRTIO_CFG) != cfg0;
	kprintf("hostile dev=%s kind=%s at=%s needs_reset=%u config_irq=%u status=0x%x\n",
		dev, kind, at_name(), needs_reset, *config_irq, vdev_status(d));
	return needs_reset;
}

static const char *verdict(const char *dev, unsigned needs_reset, unsigned config_irq,
			   const char *recover_fail)
{
	if (recover_fail)
		kprintf("hostile dev=%s recover failed reason=%s\n", dev, recover_fail);
	kprintf("hostile dev=%s recovered=%u\n", dev, recover_fail == NULL);
	if (recover_fail)
		return "not-recovered";
	if (!needs_reset)
		return "no-needs-reset";
	if (!config_irq)
		return "no-config-irq";
	return NULL;
}

/* ---- virtio-blk ---- */

/* Reset, initialise again, write 8 sectors at lba 256 and read them back. */
static const char *blk_recover(void)
{
	const char *r = vblk_init(&vblk, 1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	unsigned seed = param("seed", 3);
	for (unsigned i = 0; i < 8 * SECTOR_SIZE; i++)
		hbuf[i] = (uint8_t)(i * 7 + seed);
	if ((r = blk_rw(q, 1, 256, hbuf, 8)))
		return r;
	memset(hbuf, 0, 8 * SECTOR_SIZE);
	if ((r = blk_rw(q, 0, 256, hbuf, 8)))
		return r;
	for (unsigned i = 0; i < 8 * SECTOR_SIZE; i++)
		if (hbuf[i] != (uint8_t)(i * 7 + seed))
			return "data-mismatch";
	return NULL;
}

/* Linux's largest request: an indirect table of exactly queue-size entries
 * (header, seg_max = size - 2 one-sector segments, status). Legal: it must
 * complete OK, and the data is reported as a CRC for the host to compare. */
static const char *blk_full_indirect(struct vq *q, struct blk_slot *s)
{
	unsigned size = q->size;
	if (!vblk.indirect_ok)
		return "no-indirect";
	if (vblk.seg_max < size - 2)
		return "seg-max-too-small";
	set_desc(&itable[0], (uintptr_t)s, 16, N, 1);
	for (unsigned i = 1; i < size - 1; i++)
		set_desc(&itable[i], (uintptr_t)hbuf + (i - 1) * SECTOR_SIZE, SECTOR_SIZE, N | W, i + 1);
	set_desc(&itable[size - 1], (uintptr_t)&s->status, 1, W, 0);
	set_desc(&q->desc[0], (uintptr_t)itable, size * sizeof(struct vring_desc),
		 VRING_DESC_F_INDIRECT, 0);
	q->busy[0] = 1;
	vq_arm(q);
	vq_publish(q, 0);
	vq_kick(q, 1);
	const char *r = vq_wait(q);
	if (r)
		return r;
	uint32_t id = 0, len = 0;
	vq_pop(q, &id, &len);
	q->busy[0] = 0;
	unsigned bytes = (size - 2) * SECTOR_SIZE;
	kprintf("hostile dev=blk kind=full-indirect entries=%u status=%u used_len=%u sectors=%u crc32=0x%08x needs_reset=%u\n",
		size, s->status, len, size - 2, crc32(hbuf, bytes),
		(vdev_status(&vblk.vd) & VSTAT_NEEDS_RESET) != 0);
	if (id != 0)
		return "bad-used-id";
	if (s->status != VIRTIO_BLK_S_OK)
		return "status-not-ok";
	if (len != bytes + 1)
		return "bad-used-len";
	return NULL;
}

static const char *test_hostile_blk(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	struct blk_slot *s = &q->slots[0];
	const char *kind = param_str("kind", "zero-status");
	uint64_t hdr = (uintptr_t)s, st = (uintptr_t)&s->status, at = at_addr();

	s->type = VIRTIO_BLK_T_IN;
	s->ioprio = 0;
	s->sector = 0;
	s->status = 0xff;
	if (!kstrcmp(kind, "full-indirect"))
		return blk_full_indirect(q, s);
	if (!kstrcmp(kind, "zero-status")) {
		/* The status byte is the last byte of the last writable
		 * buffer: here that buffer has no bytes. */
		set_desc(&q->desc[0], hdr, 16, N, 1);
		set_desc(&q->desc[1], (uintptr_t)hbuf, SECTOR_SIZE, N | W, 2);
		set_desc(&q->desc[2], at, 0, W, 0);
	} else if (!kstrcmp(kind, "zero-data")) {
		set_desc(&q->desc[0], hdr, 16, N, 1);
		set_desc(&q->desc[1], at, 0, N | W, 2);
		set_desc(&q->desc[2], st, 1, W, 0);
	} else {
		return "unknown-kind";
	}
	q->busy[0] = 1;
	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG), config_irq;
	publish_head0(q);
	unsigned needs_reset = watch_needs_reset("blk", kind, &vblk.vd, cfg0, &config_irq);
	return verdict("blk", needs_reset, config_irq, blk_recover());
}

/* ---- virtio-net ---- */

static const char *test_hostile_net(void)
{
	const char *kind = param_str("kind", "tx-zero");
	int rx = !kstrcmp(kind, "rx-zero");
	const char *r = net_hostile_setup(!rx);
	if (r)
		return r;
	struct vnet_pair *vp = &vnet.p[0];
	static uint8_t ctrl_hdr[2] __attribute__((aligned(16))) = { VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET };
	uint64_t at = at_addr();
	struct vq *q;

	if (!kstrcmp(kind, "tx-zero")) {
		/* A frame, then a zero-length device-readable buffer. */
		q = vp->tx;
		memset(vp->tx_mem, 0, VNET_HDR_LEN + ETH_ZLEN);
		set_desc(&q->desc[0], (uintptr_t)vp->tx_mem, VNET_HDR_LEN + ETH_ZLEN, N, 1);
		set_desc(&q->desc[1], at, 0, 0, 0);
	} else if (rx) {
		/* A zero-length receive buffer; the host's ARP reply makes the device use it. */
		q = vp->rx;
		set_desc(&q->desc[0], at, 0, W, 0);
	} else if (!kstrcmp(kind, "ctrl-zero")) {
		/* The ack is the last byte of the last writable buffer: none here. */
		q = vnet.ctrl;
		if (!q)
			return "no-ctrl-vq";
		set_desc(&q->desc[0], (uintptr_t)ctrl_hdr, 2, N, 1);
		set_desc(&q->desc[1], at, 0, W, 0);
	} else {
		return "unknown-kind";
	}
	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG), config_irq;
	publish_head0(q);
	if (rx && net_hostile_arp_request() < 0)
		return "arp-send-failed";
	unsigned needs_reset = watch_needs_reset("net", kind, &vnet.vd, cfg0, &config_irq);
	const char *fail = vnet_init(&vnet, 1, 1);
	if (!fail)
		fail = net_hostile_arp();
	return verdict("net", needs_reset, config_irq, fail);
}

/* ---- virtio-scsi (and vhost-scsi) ---- */

static struct virtio_scsi_cmd_req sreq __attribute__((aligned(64)));
static struct virtio_scsi_cmd_resp sresp __attribute__((aligned(64)));

/* Reset, initialise again, TEST UNIT READY (a unit attention retried) and READ(10) of one block. */
static const char *scsi_recover(unsigned lun)
{
	struct vscsi *s = &vscsi;
	struct scsi_res res;
	const char *r = vscsi_init(s);
	if (r)
		return r;
	uint8_t tur[6] = { OP_TEST_UNIT_READY };
	struct scsi_cmd c = { .lun = lun, .cdb = tur, .cdb_len = 6 };
	if ((r = scsi_exec_ua(s, &c, &res)))
		return r;
	uint8_t rd[10] = { OP_READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0 };
	struct vbuf b = { (uintptr_t)hbuf, 4096, 1 };
	struct scsi_cmd c2 = { .lun = lun, .cdb = rd, .cdb_len = 10, .bufs = &b, .nbufs = 1 };
	if ((r = scsi_exec_ua(s, &c2, &res)))
		return r;
	if (res.response != 0 || res.status != 0)
		return "read-failed";
	return NULL;
}

static const char *test_hostile_scsi(void)
{
	const char *r = vscsi_open();
	if (r)
		return r;
	struct vscsi *s = &vscsi;
	unsigned lun = param("lun", 0);
	const char *kind = param_str("kind", "zero-resp");
	struct vq *q = vscsi_reqq(s, 0);
	uint64_t at = at_addr();

	memset(&sreq, 0, sizeof(sreq));
	memset(&sresp, 0, sizeof(sresp));
	scsi_lun_bytes(s, lun, sreq.lun);
	sreq.tag = 0x4e57;
	if (!kstrcmp(kind, "zero-resp")) {
		/* TEST UNIT READY whose only writable buffer (the response) is empty. */
		sreq.cdb[0] = OP_TEST_UNIT_READY;
		set_desc(&q->desc[0], (uintptr_t)&sreq, sizeof(sreq), N, 1);
		set_desc(&q->desc[1], at, 0, W, 0);
	} else if (!kstrcmp(kind, "zero-data")) {
		/* READ(10) of one block into a zero-length data-in buffer. */
		uint8_t *cdb = sreq.cdb;
		cdb[0] = OP_READ_10;
		cdb[8] = 1;
		set_desc(&q->desc[0], (uintptr_t)&sreq, sizeof(sreq), N, 1);
		set_desc(&q->desc[1], (uintptr_t)&sresp, sizeof(sresp), N | W, 2);
		set_desc(&q->desc[2], at, 0, W, 0);
	} else {
		return "unknown-kind";
	}
	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG), config_irq;
	publish_head0(q);
	unsigned needs_reset = watch_needs_reset("scsi", kind, &s->vd, cfg0, &config_irq);
	return verdict("scsi", needs_reset, config_irq, scsi_recover(lun));
}

/* ---- a flood on one device, I/O on another (fairness) ---- */

static struct {
	uint32_t type, ioprio;
	uint64_t sector;
} flood_hdr __attribute__((aligned(16)));
static uint8_t flood_id[VQ_MAX_SIZE] __attribute__((aligned(16)));
static volatile uint8_t flood_status;
static struct vring_desc flood_table[VQ_MAX_SIZE] __attribute__((aligned(16)));

struct flood {
	struct vq *q;
	uint16_t avail;			/* next avail->idx the flood publishes */
	uint64_t published;		/* chains made available in all */
	uint32_t refills;
};

/* Tops the queue up to a full ring ahead of the device's used index, every
 * entry the same GET_ID chain (head 0), and rings the doorbell: the device
 * always finds a whole queue of work, however fast it takes it. */
static void flood_refill(struct flood *f)
{
	struct vq *q = f->q;
	uint16_t room = (uint16_t)(q->size - (uint16_t)(f->avail - vq_used_idx(q)));
	if (!room)
		return;
	for (uint16_t i = 0; i < room; i++)
		q->avail[2 + ((f->avail + i) & (q->size - 1))] = 0;
	f->avail += room;
	mb();
	q->avail[1] = f->avail;
	mb();
	*(volatile uint16_t *)q->notify = (uint16_t)q->index;
	f->published += room;
	f->refills++;
}

/* One READ(10)/WRITE(10) of `blocks` 512-byte blocks on the SCSI LUN 0,
 * flooding the blk queue while it is in flight. */
static const char *flood_scsi_rw(struct flood *f, int write, uint32_t lba, uint8_t *buf, unsigned blocks)
{
	uint8_t cdb[10] = { 0 };
	cdb[0] = write ? OP_WRITE_10 : OP_READ_10;
	put_be32(cdb + 2, lba);
	put_be16(cdb + 7, (uint16_t)blocks);
	struct vbuf b = { (uintptr_t)buf, blocks * 512, !write };
	struct scsi_cmd c = { 0, cdb, 10, &b, 1 };
	struct vq *sq = vscsi_reqq(&vscsi, 0);
	int ctx = scsi_submit(&vscsi, 0, &c);
	if (ctx < 0)
		return "submit-failed";
	vq_kick(sq, 1);
	unsigned t0 = ticks(), limit = ms_to_ticks(param("flood-ms", 30000));
	for (;;) {
		if (scsi_reap(&vscsi, sq->slot) < 0)
			return "bad-used-id";
		if (scsi_ctx(ctx)->done)
			break;
		if (ticks() - t0 > limit)
			return "second-device-starved";
		flood_refill(f);
	}
	struct scsi_res res;
	scsi_result(ctx, &res);
	if (res.response != VIRTIO_SCSI_S_OK || res.status != 0)
		return "scsi-io-failed";
	return NULL;
}

/* hostile-flood: virtio-blk's queue kept full of long GET_ID requests
 * (interrupts off) while virtio-scsi writes and reads back `ios` 4 KiB blocks; each SCSI
 * request must complete while the flood goes on (CHAIN_BUDGET yields
 * between queues and devices). */
static const char *test_hostile_flood(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	if ((r = vscsi_open()))
		return r;
	uint8_t tur[6] = { 0 };
	struct scsi_cmd c = { 0, tur, 6, NULL, 0 };
	struct scsi_res res;
	if ((r = scsi_exec_ua(&vscsi, &c, &res)))	/* power-on unit attention out of the way */
		return r;

	/* One long chain: an indirect table of queue-size entries (header, size - 2
	 * one-byte ID segments, status), the longest a device takes; walking it
	 * costs the device far more than publishing it costs the guest. */
	struct vq *q = &vblk.vd.q[0];
	unsigned size = q->size;
	if (!vblk.indirect_ok)
		return "no-indirect";
	if (vblk.seg_max < size - 2)
		return "seg-max-too-small";
	flood_hdr.type = VIRTIO_BLK_T_GET_ID;
	set_desc(&flood_table[0], (uintptr_t)&flood_hdr, 16, N, 1);
	for (unsigned i = 1; i < size - 1; i++)
		set_desc(&flood_table[i], (uintptr_t)&flood_id[i - 1], 1, N | W, i + 1);
	set_desc(&flood_table[size - 1], (uintptr_t)&flood_status, 1, W, 0);
	set_desc(&q->desc[0], (uintptr_t)flood_table, size * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0);
	vq_set_interrupts(q, 0);
	struct flood f = { q, q->avail_idx, 0, 0 };
	uint16_t used0 = vq_used_idx(q);
	flood_refill(&f);

	unsigned ios = param("ios", 4);
	uint64_t before_io = f.published;
	for (unsigned i = 0; i < ios; i++) {
		for (unsigned k = 0; k < 4096; k++)
			hbuf[k] = (uint8_t)(k * 13 + i * 5 + 1);
		if ((r = flood_scsi_rw(&f, 1, i * 8, hbuf, 8)))
			return r;
		memset(hbuf, 0, 4096);
		if ((r = flood_scsi_rw(&f, 0, i * 8, hbuf, 8)))
			return r;
		for (unsigned k = 0; k < 4096; k++)
			if (hbuf[k] != (uint8_t)(k * 13 + i * 5 + 1))
				return "scsi-data-mismatch";
	}
	uint64_t during = f.published - before_io;

	/* Stop flooding; the device must take everything that was published. */
	unsigned t0 = ticks();
	while (vq_used_idx(q) != f.avail)
		if (ticks() - t0 > ms_to_ticks(10000))
			return "flood-not-drained";
	uint8_t st = vdev_status(&vblk.vd);
	kprintf("hostile flood blk-chains=%llu during-io=%llu refills=%u used=%u scsi-ios=%u blk-status=0x%x id0=0x%02x\n",
		(unsigned long long)f.published, (unsigned long long)during, f.refills,
		(unsigned)(uint16_t)(vq_used_idx(q) - used0), ios, st, flood_id[0]);
	if (st & VSTAT_NEEDS_RESET)
		return "flooded-device-broken";
	return NULL;
}

static const struct {
	const char *name;
	test_fn fn;
} hostile_tests[] = {
	{ "hostile-flood", test_hostile_flood },
	{ "hostile-blk", test_hostile_blk },
	{ "hostile-net", test_hostile_net },
	{ "hostile-scsi", test_hostile_scsi },
};

test_fn find_hostile_test(const char *name)
{
	for (size_t i = 0; i < sizeof(hostile_tests) / sizeof(hostile_tests[0]); i++)
		if (!kstrcmp(hostile_tests[i].name, name))
			return hostile_tests[i].fn;
	return NULL;
}
