/*
 * guest-kit: virtio-blk tests (test=blk-*) on top of virtio.c.
 *
 * Data pattern (so the host can check its image file): byte i of absolute
 * sector s is (s * 31 + i * 7 + seed) & 0xff.
 */
#include "virtio.h"

#define IOBUF_SIZE  (256 * 1024)
#define HALF_SIZE   (IOBUF_SIZE / 2)
#define MAX_SECTORS (HALF_SIZE / SECTOR_SIZE)	/* per buffer */

/* wbuf = first half, rbuf = second half; blk-bench uses all of it. */
static uint8_t iobuf[IOBUF_SIZE] __attribute__((aligned(4096)));
#define wbuf (iobuf)
#define rbuf (iobuf + HALF_SIZE)

static uint8_t user_stack[16384] __attribute__((aligned(16)));

static unsigned umin(unsigned a, unsigned b)
{
	return a < b ? a : b;
}

static void fill_pattern(uint8_t *buf, uint64_t lba, unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		uint8_t *p = buf + s * SECTOR_SIZE;
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7)
			p[i] = v;
	}
}

/* Prints "<tag> mismatch ..." at the first difference; 0 if all match. */
static int check_pattern(const char *tag, const uint8_t *buf, uint64_t lba,
			 unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		const uint8_t *p = buf + s * SECTOR_SIZE;
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7) {
			if (p[i] != v) {
				kprintf("%s mismatch lba=%llu offset=%u got=0x%02x want=0x%02x\n",
					tag, (unsigned long long)(lba + s), i, p[i], v);
				return 1;
			}
		}
	}
	return 0;
}

/* Requests of up to `chunk` sectors covering lba..lba+sectors. */
static const char *rw_range(struct vq *q, int write, uint64_t lba, uint8_t *buf,
			    unsigned sectors, unsigned chunk)
{
	for (unsigned done = 0; done < sectors; done += chunk) {
		unsigned n = umin(chunk, sectors - done);
		const char *r = blk_rw(q, write, lba + done, buf + done * SECTOR_SIZE, n);
		if (r)
			return r;
	}
	return NULL;
}

static const char *check_range(uint64_t lba, uint64_t sectors)
{
	if (!sectors || sectors > MAX_SECTORS)
		return "bad-sectors";
	if (lba + sectors > vblk.capacity)
		return "beyond-capacity";
	return NULL;
}

/* Write pattern, read it back into the other buffer, compare. */
static const char *write_verify(const char *tag, struct vq *q, uint64_t lba,
				unsigned sectors, unsigned seed, unsigned chunk)
{
	const char *r;

	if (vblk.read_only)
		return "read-only";
	fill_pattern(wbuf, lba, sectors, seed);
	if ((r = rw_range(q, 1, lba, wbuf, sectors, chunk)))
		return r;
	memset(rbuf, 0, sectors * SECTOR_SIZE);
	if ((r = rw_range(q, 0, lba, rbuf, sectors, chunk)))
		return r;
	if (check_pattern(tag, rbuf, lba, sectors, seed))
		return "verify-mismatch";
	return NULL;
}

/* One logical block (at least a sector; at most what a buffer holds). */
static uint32_t one_block(void)
{
	uint32_t b = vblk.blk_size;
	return b < SECTOR_SIZE || b > HALF_SIZE || b % SECTOR_SIZE ? SECTOR_SIZE : b;
}

static unsigned chunk_param(void)
{
	unsigned c = param("chunk", 8);
	return c && c <= MAX_SECTORS ? c : 8;
}

/* ---- blk-rw ---- */
static const char *test_blk_rw(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint64_t lba = param("lba", 0), n = param("sectors", 64);
	unsigned seed = param("seed", 1);
	if ((r = check_range(lba, n)))
		return r;

	unsigned irq0 = vq_irqs(q);
	if ((r = write_verify("blk-rw", q, lba, n, seed, chunk_param())))
		return r;
	kprintf("blk-rw verify ok sectors=%llu\n", (unsigned long long)n);
	if (vblk_has(&vblk, VIRTIO_BLK_F_FLUSH) && (r = blk_flush(q)))
		return r;
	kprintf("blk-rw interrupts=%u\n", vq_irqs(q) - irq0);
	return NULL;
}

/* ---- blk-read-check ---- */
static const char *test_blk_read_check(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint64_t lba = param("lba", 0), n = param("sectors", 64);
	unsigned seed = param("seed", 1);
	if ((r = check_range(lba, n)))
		return r;
	memset(rbuf, 0, n * SECTOR_SIZE);
	if ((r = rw_range(q, 0, lba, rbuf, n, chunk_param())))
		return r;
	if (check_pattern("blk-read-check", rbuf, lba, n, seed))
		return "verify-mismatch";
	kprintf("blk-read-check verify ok sectors=%llu\n", (unsigned long long)n);
	return NULL;
}

/* ---- blk-get-id ---- */
static const char *test_blk_get_id(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	char id[VIRTIO_BLK_ID_BYTES], out[VIRTIO_BLK_ID_BYTES + 1];
	if ((r = blk_get_id(&vblk.vd.q[0], id)))
		return r;
	unsigned n;
	for (n = 0; n < VIRTIO_BLK_ID_BYTES && id[n]; n++)
		out[n] = id[n] >= 0x20 && id[n] < 0x7f && id[n] != '"' ? id[n] : '?';
	out[n] = '\0';
	kprintf("blk-id serial=\"%s\"\n", out);
	return NULL;
}

/* ---- blk-discard ---- */
static const char *zero_or_discard(struct vq *q, uint32_t type, uint64_t lba,
				   unsigned sectors, uint32_t max, uint32_t flags)
{
	if (!max)
		max = sectors;
	for (unsigned done = 0; done < sectors;) {
		unsigned n = umin(max, sectors - done);
		uint8_t st;
		const char *r = blk_zero_or_discard(q, type, lba + done, n, flags, &st);
		if (r)
			return r;
		if (st != VIRTIO_BLK_S_OK) {
			kprintf("blk: request type=%u lba=%llu status=%u\n", type,
				(unsigned long long)(lba + done), st);
			return "bad-status";
		}
		done += n;
	}
	return NULL;
}

static const char *test_blk_discard(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint64_t lba = param("lba", 64), n = param("sectors", 16);
	unsigned seed = param("seed", 1);
	if ((r = check_range(lba, n)))
		return r;
	if (n < 2)
		return "bad-sectors";
	if (vblk.read_only)
		return "read-only";
	unsigned half = n / 2;

	fill_pattern(wbuf, lba, n, seed);
	if ((r = rw_range(q, 1, lba, wbuf, n, chunk_param())))
		return r;

	if (!vblk_has(&vblk, VIRTIO_BLK_F_WRITE_ZEROES)) {
		kprintf("blk-discard skipped=write-zeroes\n");
	} else {
		if ((r = zero_or_discard(q, VIRTIO_BLK_T_WRITE_ZEROES, lba, half,
					 vblk.max_wz_sectors, VIRTIO_BLK_WZ_UNMAP)))
			return r;
		memset(rbuf, 0xa5, half * SECTOR_SIZE);
		if ((r = rw_range(q, 0, lba, rbuf, half, chunk_param())))
			return r;
		for (unsigned i = 0; i < half * SECTOR_SIZE; i++) {
			if (rbuf[i]) {
				kprintf("blk-write-zeroes mismatch lba=%llu offset=%u got=0x%02x\n",
					(unsigned long long)(lba + i / SECTOR_SIZE),
					i % SECTOR_SIZE, rbuf[i]);
				return "not-zeroed";
			}
		}
		kprintf("blk-write-zeroes ok\n");
	}

	if (!vblk_has(&vblk, VIRTIO_BLK_F_DISCARD)) {
		kprintf("blk-discard skipped=discard\n");
	} else {
		/* The unmap flag is reserved for discard: always 0 here. */
		if ((r = zero_or_discard(q, VIRTIO_BLK_T_DISCARD, lba + half, n - half,
					 vblk.max_discard_sectors, 0)))
			return r;
		kprintf("blk-discard ok\n");
	}
	return NULL;
}

/* ---- blk-unsupp ---- */
static const char *test_blk_unsupp(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint8_t st1, st2;

	if ((r = blk_sync(q, param("type", 0x1234), 0, NULL, 0, 0, &st1)))
		return r;
	kprintf("blk-unsupp status=%u\n", st1);
	if ((r = blk_sync(q, VIRTIO_BLK_T_IN, vblk.capacity, rbuf, one_block(), 1, &st2)))
		return r;
	kprintf("blk-beyond status=%u\n", st2);
	if (st1 != VIRTIO_BLK_S_UNSUPP)
		return "unsupp-status";
	if (st2 != VIRTIO_BLK_S_IOERR)
		return "beyond-status";
	return NULL;
}

/* ---- blk-mq ---- */
static const char *test_blk_mq(void)
{
	const char *r = vblk_open(0);
	if (r)
		return r;
	if (!vblk_has(&vblk, VIRTIO_BLK_F_MQ))
		return "no-mq";
	unsigned seed = param("seed", 1);
	if (128 + 8 * vblk.vd.nq > vblk.capacity)
		return "beyond-capacity";
	for (unsigned i = 0; i < vblk.vd.nq; i++) {
		struct vq *q = &vblk.vd.q[i];
		unsigned irq0 = vq_irqs(q);
		if ((r = write_verify("blk-mq", q, 128 + 8 * i, 8, seed, 8)))
			return r;
		kprintf("blk-mq queue=%u ok interrupts=%u\n", i, vq_irqs(q) - irq0);
	}
	return hold("blk-mq");
}

/* ---- blk-msix-mask ---- */
static const char *test_blk_msix_mask(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uintptr_t ctrl = msix_entry(&vblk.vd, 1) + MSIX_ENTRY_CTRL;	/* queue 0 */
	unsigned limit = ms_to_ticks(param("timeout-ms", 10000));

	MMIO(uint32_t, ctrl) = MSIX_ENTRY_CTRL_MASK;
	unsigned irq0 = vq_irqs(q);
	vq_arm(q);
	if (blk_submit(q, 0, VIRTIO_BLK_T_IN, 0, rbuf, one_block(), 1) < 0)
		return "submit-failed";
	vq_kick(q, 0);
	/* Poll (interrupts on, no hlt): anything delivered now is counted. */
	unsigned t0 = ticks();
	while (vq_used_idx(q) == q->last_used)
		if (ticks() - t0 > limit)
			return vq_timeout_reason(q);
	/*
	 * The pending bit may lag the used index: a device whose interrupt goes
	 * through an eventfd the VMM watches (an iothread, a vhost back-end) writes
	 * the used ring first. Wait for it, bounded.
	 */
	unsigned pba_wait = ms_to_ticks(param("pba-wait-ms", 500));
	t0 = ticks();
	unsigned pba;
	while (!(pba = msix_pending(&vblk.vd, 1)) && ticks() - t0 <= pba_wait)
		;
	unsigned masked = vq_irqs(q) - irq0;
	kprintf("blk-msix-mask pba=%u interrupts_while_masked=%u\n", pba, masked);

	MMIO(uint32_t, ctrl) = 0;
	unsigned wait = ms_to_ticks(param("irq-wait-ms", 2000));
	t0 = ticks();
	cli();
	while (vq_irqs(q) - irq0 == masked && ticks() - t0 <= wait)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	sti();
	unsigned delivered = vq_irqs(q) - irq0 > masked;
	kprintf("blk-msix-mask delivered_after_unmask=%u\n", delivered);

	if (vq_reap(q, NULL) != 0)
		return "bad-used-id";
	if (q->slots[0].status != VIRTIO_BLK_S_OK)
		return "bad-status";
	if (pba != 1)
		return "pba-not-set";
	if (masked)
		return "interrupt-while-masked";
	if (!delivered)
		return "not-delivered-after-unmask";
	return NULL;
}

/* ---- blk-busmaster ---- */
static const char *test_blk_busmaster(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	const uint64_t lba = 200;
	const unsigned n = 8, seed = 77;

	if ((r = check_range(lba, n)))
		return r;
	if (vblk.read_only)
		return "read-only";
	fill_pattern(wbuf, lba, n, seed);
	vdev_set_bus_master(&vblk.vd, 0);
	vq_arm(q);
	if (blk_submit(q, 0, VIRTIO_BLK_T_OUT, lba, wbuf, n * SECTOR_SIZE, 0) < 0)
		return "submit-failed";
	vq_kick(q, 1);
	outl(PORT_SYNC, 0xB0);
	unsigned spins = param("spins", 100000);
	for (volatile unsigned i = 0; i < spins; i++)
		;
	unsigned used = (uint16_t)(vq_used_idx(q) - q->last_used);
	kprintf("blk-busmaster used_while_disabled=%u\n", used);
	kprintf("blk-busmaster device_status=0x%x\n", vdev_status(&vblk.vd));

	vdev_set_bus_master(&vblk.vd, 1);
	outl(PORT_SYNC, 0xB1);
	if (param("rekick", 1))
		vq_kick(q, 1);
	if ((r = vq_wait(q)))
		return r;
	if (vq_reap(q, NULL) != 0)
		return "bad-used-id";
	if ((r = q->slots[0].status == VIRTIO_BLK_S_OK ? NULL : "bad-status"))
		return r;
	memset(rbuf, 0, n * SECTOR_SIZE);
	if ((r = blk_rw(q, 0, lba, rbuf, n)))
		return r;
	if (check_pattern("blk-busmaster", rbuf, lba, n, seed))
		return "verify-mismatch";
	kprintf("blk-busmaster verify ok\n");
	return used ? "processed-while-disabled" : NULL;
}

/* ---- blk-hostile ---- */

static void set_desc(volatile struct vring_desc *d, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

static const char *test_blk_hostile(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	struct blk_slot *s = &q->slots[0];
	const char *kind = param_str("kind", "loop");
	const uint16_t N = VRING_DESC_F_NEXT, W = VRING_DESC_F_WRITE;
	uint64_t hdr = (uintptr_t)s, st = (uintptr_t)&s->status;

	s->type = VIRTIO_BLK_T_IN;
	s->ioprio = 0;
	s->sector = 0;
	s->status = 0xff;
	if (!kstrcmp(kind, "loop")) {
		/* Both device-readable, so the loop is the only fault. */
		set_desc(&q->desc[0], hdr, 16, N, 1);
		set_desc(&q->desc[1], (uintptr_t)rbuf, SECTOR_SIZE, N, 0);
	} else if (!kstrcmp(kind, "oob")) {
		set_desc(&q->desc[0], hdr, 16, N, 1);
		set_desc(&q->desc[1], 0x7fff00000000ull, 4096, N | W, 2);
		set_desc(&q->desc[2], st, 1, W, 0);
	} else if (!kstrcmp(kind, "long")) {
		unsigned size = q->size;
		if (vblk.indirect_ok) {
			/* An indirect table may hold up to its own length / 16
			 * entries (more than the queue size is legal), but the
			 * device caps it at 32768: claim 32769 entries of RAM
			 * (their contents do not matter, the size is refused). */
			set_desc(&q->desc[0], 0x1000000, 32769 * sizeof(struct vring_desc),
				 VRING_DESC_F_INDIRECT, 0);
		} else {
			/* All descriptors chained, the last one back to the
			 * head; all device-readable so only the length/loop is
			 * wrong. */
			set_desc(&q->desc[0], hdr, 16, N, 1);
			for (unsigned i = 1; i < size; i++)
				set_desc(&q->desc[i], (uintptr_t)rbuf + (i - 1) * SECTOR_SIZE,
					 SECTOR_SIZE, N, (i + 1) % size);
		}
	} else if (!kstrcmp(kind, "wrongdir")) {
		set_desc(&q->desc[0], hdr, 16, N, 1);
		set_desc(&q->desc[1], (uintptr_t)rbuf, SECTOR_SIZE, N | W, 2);
		set_desc(&q->desc[2], st, 1, 0, 0);	/* status: device-readable */
	} else {
		return "unknown-kind";
	}

	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG);
	q->busy[0] = 1;
	vq_arm(q);
	vq_publish(q, 0);
	vq_kick(q, 1);

	unsigned limit = ms_to_ticks(param("hostile-ms", 2000));
	unsigned t0 = ticks(), needs_reset = 0;
	while (ticks() - t0 <= limit) {
		if (vdev_status(&vblk.vd) & VSTAT_NEEDS_RESET) {
			needs_reset = 1;
			break;
		}
	}
	if (needs_reset) {	/* give the config interrupt a moment */
		unsigned t1 = ticks();
		cli();
		while (irq_count(VEC_VIRTIO_CFG) == cfg0 && ticks() - t1 <= 50)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		sti();
	}
	unsigned config_irq = irq_count(VEC_VIRTIO_CFG) != cfg0;
	kprintf("blk-hostile kind=%s needs_reset=%u config_irq=%u\n", kind,
		needs_reset, config_irq);
	kprintf("blk-hostile detail used=%u req_status=0x%x device_status=0x%x\n",
		(unsigned)(uint16_t)(vq_used_idx(q) - q->last_used), s->status,
		vdev_status(&vblk.vd));

	/* Reset and start again from scratch (vblk_init resets first). */
	unsigned recovered = 0;
	r = vblk_init(&vblk, 1);
	if (r)
		kprintf("blk-hostile reinit failed reason=%s\n", r);
	else if ((r = write_verify("blk-hostile", &vblk.vd.q[0], param("lba", 256), 8,
				   param("seed", 1), 8)))
		kprintf("blk-hostile verify failed reason=%s\n", r);
	else
		recovered = 1;
	kprintf("blk-hostile recovered=%u\n", recovered);
	if (!recovered)
		return "not-recovered";
	if (!needs_reset)
		return "no-needs-reset";
	return NULL;
}

/* ---- blk-bench ----
 * One loop keeps `queues` request queues busy at once, each with `depth`
 * requests in flight: the first requests go round-robin over the queues,
 * then each completion is replaced on its own queue. */
struct bench {
	struct vq *q[VQ_MAX];
	unsigned nq, depth;
	int random, kernel_wait, irq, verify;
	uint32_t bs;
	unsigned pattern;		/* verify: the data pattern's seed */
	uint64_t count, blocks, submitted, completed, errors, verified, rng;
	uint64_t qsubmitted[VQ_MAX], qcompleted[VQ_MAX];
	uint64_t bad_lba;		/* verify: first mismatch */
	unsigned bad_offset, bad_got, bad_want;
	unsigned limit;
	const char *fail;
};

/* Queue qi's slot reads into its own part of iobuf while that fits (always
 * with verify), else wraps: reads only, so sharing does not matter. */
static uint8_t *bench_buf(const struct bench *k, unsigned qi, unsigned slot)
{
	uint32_t off = (uint32_t)(((qi * k->depth + slot) * (uint64_t)k->bs) % IOBUF_SIZE);
	if (off + k->bs > IOBUF_SIZE)
		off = 0;
	return iobuf + off;
}

static void bench_submit(struct bench *k, unsigned qi, unsigned slot)
{
	uint64_t per = k->bs / SECTOR_SIZE, blk;
	if (k->random) {
		k->rng = k->rng * 6364136223846793005ull + 1442695040888963407ull;
		blk = (k->rng >> 33) % k->blocks;
	} else {
		blk = k->submitted % k->blocks;
	}
	blk_submit(k->q[qi], slot, VIRTIO_BLK_T_IN, blk * per, bench_buf(k, qi, slot), k->bs, 1);
	k->submitted++;
	k->qsubmitted[qi]++;
}

/* check_pattern without kprintf (this runs in ring 3): 0 if all match,
 * else the first mismatch is kept for the report. */
static int bench_verify(struct bench *k, const uint8_t *buf, uint64_t lba)
{
	for (unsigned s = 0; s < k->bs / SECTOR_SIZE; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + k->pattern);
		const uint8_t *p = buf + s * SECTOR_SIZE;
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7) {
			if (p[i] != v) {
				k->bad_lba = lba + s;
				k->bad_offset = i;
				k->bad_got = p[i];
				k->bad_want = v;
				return 1;
			}
		}
	}
	return 0;
}

/* Reaps queue qi and puts new requests in the freed slots; the number reaped, or -1. */
static int bench_queue(struct bench *k, unsigned qi)
{
	struct vq *q = k->q[qi];
	uint8_t freed[VQ_MAX_SLOTS];
	unsigned got = 0;

	for (;;) {
		int slot = vq_reap(q, NULL);
		if (slot == -1)
			break;
		if (slot < 0) {
			k->fail = "bad-used-id";
			return -1;
		}
		if (q->slots[slot].status != VIRTIO_BLK_S_OK) {
			k->errors++;
		} else if (k->verify) {
			if (bench_verify(k, bench_buf(k, qi, slot), q->slots[slot].sector)) {
				k->fail = "verify-mismatch";
				return -1;
			}
			k->verified++;
		}
		k->completed++;
		k->qcompleted[qi]++;
		freed[got++] = slot;
	}
	if (!got)
		return 0;
	/* Callbacks back on before the next submissions, so the device
	 * sees the new used_event when it completes them. */
	if (k->irq)
		vq_set_interrupts(q, 1);
	unsigned resub = 0;
	for (unsigned i = 0; i < got && k->submitted < k->count; i++, resub++)
		bench_submit(k, qi, freed[i]);
	if (resub)
		vq_kick(q, 0);
	return got;
}

/* The submission/completion loop. Runs at CPL3 (run_user) or CPL0; only
 * CPL0 with interrupts and one queue may halt, everything else polls the
 * used rings. */
static uint64_t bench_loop(void *arg)
{
	struct bench *k = arg;
	unsigned t0[VQ_MAX];

	for (unsigned s = 0; s < k->depth; s++)
		for (unsigned qi = 0; qi < k->nq && k->submitted < k->count; qi++)
			bench_submit(k, qi, s);
	for (unsigned qi = 0; qi < k->nq; qi++) {
		vq_kick(k->q[qi], 0);
		t0[qi] = ticks();
	}
	while (k->completed < k->count) {
		int any = 0;
		for (unsigned qi = 0; qi < k->nq; qi++) {
			int got = bench_queue(k, qi);
			if (got < 0)
				return 1;
			if (got) {
				t0[qi] = ticks();
				any = 1;
			}
		}
		if (any)
			continue;
		if (k->kernel_wait) {
			if ((k->fail = vq_wait(k->q[0])))
				return 1;
			continue;
		}
		/* A queue with requests in flight and no completion for timeout-ms. */
		for (unsigned qi = 0; qi < k->nq; qi++) {
			if (k->qcompleted[qi] < k->qsubmitted[qi] && ticks() - t0[qi] > k->limit) {
				k->fail = vq_timeout_reason(k->q[qi]);
				return 1;
			}
		}
	}
	return 0;
}

static const char *test_blk_bench(void)
{
	unsigned nq = param("queues", 1);
	if (!nq || nq > VQ_MAX)
		return "bad-queues";
	const char *r = vblk_open(nq);
	if (r)
		return r;
	if (nq > 1 && !vblk_has(&vblk, VIRTIO_BLK_F_MQ))
		return "no-mq";
	if (vblk.vd.nq < nq)
		return "too-few-queues";
	const char *mode = param_str("mode", "randread");
	struct bench k = { .nq = nq, .rng = param("seed", 1) };
	unsigned ring = param("ring", 3), irq = param("irq", 1);
	uint64_t depth = param("depth", 1);

	if (!kstrcmp(mode, "randread"))
		k.random = 1;
	else if (kstrcmp(mode, "seqread"))
		return "unknown-mode";
	k.bs = param("bs", 4096);
	if (!k.bs || k.bs % SECTOR_SIZE || k.bs > IOBUF_SIZE)
		return "bad-bs";
	k.count = param("count", 2000);
	k.blocks = vblk.capacity / (k.bs / SECTOR_SIZE);
	if (!k.blocks)
		return "beyond-capacity";
	for (unsigned qi = 0; qi < nq; qi++) {
		k.q[qi] = &vblk.vd.q[qi];
		if (!depth || depth > k.q[qi]->nslots)
			return "bad-depth";
	}
	if (ring != 0 && ring != 3)
		return "bad-ring";
	k.depth = depth;
	k.verify = param("verify", 0);
	k.pattern = param("pattern", 1);
	if (k.verify && nq * depth * k.bs > IOBUF_SIZE)
		return "verify-buffer-too-small";	/* every slot needs its own buffer */
	k.irq = irq;
	k.kernel_wait = ring == 0 && irq && nq == 1;
	k.limit = ms_to_ticks(param("timeout-ms", 10000));
	unsigned irq0[VQ_MAX], kicks0[VQ_MAX];
	for (unsigned qi = 0; qi < nq; qi++) {
		k.q[qi]->nslots = depth;	/* bench_loop keeps every slot busy */
		vq_set_interrupts(k.q[qi], irq);
	}
	if (ring == 3)
		user_init();

	for (unsigned qi = 0; qi < nq; qi++) {
		irq0[qi] = vq_irqs(k.q[qi]);
		kicks0[qi] = k.q[qi]->notifies;
	}
	outl(PORT_SYNC, 0xC0);
	if (ring == 3)
		run_user(bench_loop, &k, user_stack + sizeof(user_stack));
	else
		bench_loop(&k);
	outl(PORT_SYNC, 0xC1);

	unsigned irqs = 0, kicks = 0;
	for (unsigned qi = 0; qi < nq; qi++) {
		irqs += vq_irqs(k.q[qi]) - irq0[qi];
		kicks += k.q[qi]->notifies - kicks0[qi];
	}
	kprintf("blk-bench mode=%s bs=%u count=%llu bytes=%llu\n", mode, k.bs,
		(unsigned long long)k.completed,
		(unsigned long long)(k.completed * k.bs));
	kprintf("blk-bench ring=%u depth=%llu irq=%u interrupts=%u notifies=%u errors=%llu\n",
		ring, (unsigned long long)depth, irq, irqs, kicks, (unsigned long long)k.errors);
	if (nq > 1)
		for (unsigned qi = 0; qi < nq; qi++)
			kprintf("blk-bench queue=%u count=%llu interrupts=%u notifies=%u\n", qi,
				(unsigned long long)k.qcompleted[qi],
				vq_irqs(k.q[qi]) - irq0[qi], k.q[qi]->notifies - kicks0[qi]);
	if (k.verify) {
		if (k.fail && !kstrcmp(k.fail, "verify-mismatch"))
			kprintf("blk-bench mismatch lba=%llu offset=%u got=0x%02x want=0x%02x\n",
				(unsigned long long)k.bad_lba, k.bad_offset, k.bad_got, k.bad_want);
		kprintf("blk-bench verified=%llu\n", (unsigned long long)k.verified);
	}
	if (k.fail)
		return k.fail;
	if (k.errors)
		return "io-errors";
	return NULL;
}

/* ---- ring3: run_user smoke test ---- */
static uint64_t ring3_fn(void *arg)
{
	uint64_t n = *(uint64_t *)arg, acc = 0;
	for (uint64_t i = 0; i < n; i++)
		acc = acc * 3 + i;
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return (acc & ~3ull) | (cs & 3);
}

static const char *test_ring3(void)
{
	uint64_t n = param("count", 100000000);
	user_init();
	uint64_t v = run_user(ring3_fn, &n, user_stack + sizeof(user_stack));
	kprintf("ring3 cpl=%llu loops=%llu\n", (unsigned long long)(v & 3),
		(unsigned long long)n);
	return (v & 3) == 3 ? NULL : "not-cpl3";
}

/* ---- blk-fill: write until the host's disk is full ----
 * Writes `chunk` sectors per request from `lba` (the pattern, `seed`) until a
 * request is not OK (or `max` requests, or the end of the disk), printing each
 * request's status; then two FLUSHes (when negotiated; flush=0 does not),
 * printing theirs. The host checks that what it answered OK is in the image. */
static const char *test_blk_fill(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint64_t lba = param("lba", 0), max = param("max", 1024);
	unsigned chunk = chunk_param(), seed = param("seed", 1), n = 0, failed = 0;
	uint8_t st;

	if (vblk.read_only)
		return "read-only";
	for (; n < max && lba + chunk <= vblk.capacity && !failed; n++, lba += chunk) {
		fill_pattern(wbuf, lba, chunk, seed);
		if ((r = blk_sync(q, VIRTIO_BLK_T_OUT, lba, wbuf, chunk * SECTOR_SIZE, 0, &st)))
			return r;
		kprintf("blk-fill write lba=%llu sectors=%u status=%u\n",
			(unsigned long long)lba, chunk, st);
		if (st == 0xff)
			return "status-not-written";
		failed = st != VIRTIO_BLK_S_OK;
	}
	for (unsigned i = 0; i < 2 && vblk_has(&vblk, VIRTIO_BLK_F_FLUSH); i++) {
		if ((r = blk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, &st)))
			return r;
		kprintf("blk-fill flush status=%u\n", st);
	}
	kprintf("blk-fill writes=%u failed=%u\n", n, failed);
	return failed ? NULL : "no-write-failed";
}

/* ---- blk-stall: the stall detector's blind spots, from a real driver ---- */

/* Waits `ms` with interrupts on, halting between timer ticks (cheap at CPL0). */
static void idle_ms(unsigned ms)
{
	unsigned t0 = ticks(), n = ms_to_ticks(ms);
	cli();
	while (ticks() - t0 < n)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	sti();
}

/* What a driver that consumed its used entries tells the device (as Linux's
 * virtqueue_get_buf): interrupt me at the next one. */
static void consumed(struct vq *q)
{
	vq_set_interrupts(q, 1);
}

static const char *test_blk_stall(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	const char *kind = param_str("kind", "masked");
	unsigned hold = param("hold-ms", 2000), tail = param("tail-ms", 0);
	unsigned limit = ms_to_ticks(param("timeout-ms", 10000));
	uintptr_t ctrl = msix_entry(&vblk.vd, 1) + MSIX_ENTRY_CTRL;	/* queue 0 */
	unsigned irq0 = vq_irqs(q), t0;

	if (!kstrcmp(kind, "poll")) {
		/* Interrupts suppressed, one read at a time, for hold-ms. */
		unsigned n = 0;
		t0 = ticks();
		while (ticks() - t0 < ms_to_ticks(hold)) {
			vq_set_interrupts(q, 0);
			if (blk_submit(q, 0, VIRTIO_BLK_T_IN, n % 8, rbuf, one_block(), 1) < 0)
				return "submit-failed";
			vq_kick(q, 0);
			unsigned t1 = ticks();
			while (vq_used_idx(q) == q->last_used)
				if (ticks() - t1 > limit)
					return vq_timeout_reason(q);
			if (vq_reap(q, NULL) != 0)
				return "bad-used-id";
			n++;
		}
		kprintf("blk-stall kind=poll requests=%u interrupts=%u\n", n, vq_irqs(q) - irq0);
		return NULL;
	}
	int masked = !kstrcmp(kind, "masked"), novec = !kstrcmp(kind, "no-vector"), ignore = !kstrcmp(kind, "ignore");
	if (!masked && !novec && !ignore)
		return "bad-kind";
	if (masked)
		MMIO(uint32_t, ctrl) = MSIX_ENTRY_CTRL_MASK;
	if (novec) {
		MMIO(uint16_t, vblk.vd.common + VCOMMON_Q_SELECT) = 0;
		MMIO(uint16_t, vblk.vd.common + VCOMMON_Q_MSIX) = VIRTIO_MSI_NO_VECTOR;
	}
	vq_arm(q);
	if (blk_submit(q, 0, VIRTIO_BLK_T_IN, 0, rbuf, one_block(), 1) < 0)
		return "submit-failed";
	vq_kick(q, 0);
	t0 = ticks();
	/* masked / no-vector: poll the used index; ignore: wait for the interrupt itself. */
	while (ignore ? vq_irqs(q) == irq0 : vq_used_idx(q) == q->last_used)
		if (ticks() - t0 > limit)
			return vq_timeout_reason(q);
	kprintf("blk-stall kind=%s holding used=%u interrupts=%u\n", kind, vq_used_idx(q), vq_irqs(q) - irq0);
	idle_ms(hold);		/* the used entry is left unconsumed; the vector stays masked / unassigned */
	unsigned during = vq_irqs(q) - irq0;
	if (masked) {
		MMIO(uint32_t, ctrl) = 0;
		t0 = ticks();
		cli();
		while (vq_irqs(q) == irq0 + during && ticks() - t0 <= ms_to_ticks(2000))
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		sti();
	}
	unsigned after = vq_irqs(q) - irq0;
	if (vq_reap(q, NULL) != 0)
		return "bad-used-id";
	if (q->slots[0].status != VIRTIO_BLK_S_OK)
		return "bad-status";
	consumed(q);
	kprintf("blk-stall kind=%s released interrupts_during_hold=%u interrupts=%u\n", kind, during, after);
	idle_ms(tail);
	if (masked && (during != 0 || after != 1))
		return "masked-interrupt-count";
	if (novec && after != 0)
		return "interrupt-without-vector";
	if (ignore && after != 1)
		return "ignore-interrupt-count";
	return NULL;
}

static const struct {
	const char *name;
	test_fn fn;
} blk_tests[] = {
	{ "blk-rw", test_blk_rw },
	{ "blk-read-check", test_blk_read_check },
	{ "blk-get-id", test_blk_get_id },
	{ "blk-discard", test_blk_discard },
	{ "blk-unsupp", test_blk_unsupp },
	{ "blk-mq", test_blk_mq },
	{ "blk-msix-mask", test_blk_msix_mask },
	{ "blk-busmaster", test_blk_busmaster },
	{ "blk-hostile", test_blk_hostile },
	{ "blk-bench", test_blk_bench },
	{ "blk-fill", test_blk_fill },
	{ "blk-stall", test_blk_stall },
	{ "ring3", test_ring3 },
};

test_fn find_blk_test(const char *name)
{
	for (size_t i = 0; i < sizeof(blk_tests) / sizeof(blk_tests[0]); i++)
		if (!kstrcmp(blk_tests[i].name, name))
			return blk_tests[i].fn;
	return NULL;
}
