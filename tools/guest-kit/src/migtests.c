/*
 * guest-kit: workloads to migrate or snapshot in the middle of (test=mig-*).
 *
 * mig-blk-loop  writes `iters` distinct ranges of `sectors` sectors to the
 *               virtio-blk disk, one request at a time (range i at lba
 *               i * sectors, blktests' pattern with seed + i), printing
 *               "mig-blk-loop progress i=N" every `every` writes; then reads
 *               every range back and checks it.
 * mig-mem       dirties `mb` MiB from `base-mb` MiB on: `passes` passes, each
 *               writing one qword (pass, page) per page with `delay` spins
 *               between pages (the dirty rate), printing
 *               "mig-mem pass=N"; then checks every page holds the last pass.
 *
 * With hold=1 the guest parks (cli; hlt: the in-kernel LAPIC keeps it off the
 * VMM) after PASS instead of exiting, so the host can query the devices.
 */
#include "virtio.h"

static uint8_t mbuf[64 * SECTOR_SIZE] __attribute__((aligned(4096)));

static void fill(uint8_t *buf, uint64_t lba, unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		uint8_t *p = buf + s * SECTOR_SIZE;
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7)
			p[i] = v;
	}
}

static int check(const uint8_t *buf, uint64_t lba, unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		const uint8_t *p = buf + s * SECTOR_SIZE;
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7)
			if (p[i] != v) {
				kprintf("mig mismatch lba=%llu offset=%u got=0x%02x want=0x%02x\n",
					(unsigned long long)(lba + s), i, p[i], v);
				return 1;
			}
	}
	return 0;
}

static void spin(uint64_t n)
{
	for (volatile uint64_t i = 0; i < n; i++)
		;
}

const char *hold(const char *name)
{
	if (!param("hold", 0))
		return NULL;
	kprintf("guest-kit: PASS test=%s\n", name);
	kprintf("guest-kit: holding\n");
	for (;;)
		__asm__ volatile("cli; hlt");
}

static const char *test_mig_blk_loop(void)
{
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	unsigned iters = param("iters", 200), n = param("sectors", 8);
	unsigned seed = param("seed", 1), every = param("every", 10);
	uint64_t delay = param("delay", 0);

	if (!n || n > 64)
		return "bad-sectors";
	if ((uint64_t)iters * n > vblk.capacity)
		return "beyond-capacity";
	for (unsigned i = 0; i < iters; i++) {
		uint64_t lba = (uint64_t)i * n;
		fill(mbuf, lba, n, seed + i);
		if ((r = blk_rw(q, 1, lba, mbuf, n)))
			return r;
		if (every && (i + 1) % every == 0)
			kprintf("mig-blk-loop progress i=%u\n", i + 1);
		spin(delay);
	}
	for (unsigned i = 0; i < iters; i++) {
		uint64_t lba = (uint64_t)i * n;
		memset(mbuf, 0, n * SECTOR_SIZE);
		if ((r = blk_rw(q, 0, lba, mbuf, n)))
			return r;
		if (check(mbuf, lba, n, seed + i))
			return "verify-mismatch";
	}
	kprintf("mig-blk-loop done writes=%u\n", iters);
	return hold("mig-blk-loop");
}

static const char *test_mig_mem(void)
{
	uint64_t base = param("base-mb", 16) << 20, size = param("mb", 64) << 20;
	unsigned passes = param("passes", 4);
	uint64_t delay = param("delay", 0);
	uint64_t pages = size / 4096;

	int in_ram = 0;
	for (unsigned m = 0; m < boot.nmem; m++)
		if (boot.mem[m].type == 1 && base >= boot.mem[m].base &&
		    base + size <= boot.mem[m].base + boot.mem[m].size)
			in_ram = 1;
	if (!in_ram || base < (8ull << 20))
		return "region-not-ram";
	for (unsigned p = 1; p <= passes; p++) {
		for (uint64_t i = 0; i < pages; i++) {
			volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(base + i * 4096);
			*w = ((uint64_t)p << 32) | i;
			w[256] = ~(((uint64_t)p << 32) | i);
			spin(delay);
		}
		kprintf("mig-mem pass=%u pages=%llu\n", p, (unsigned long long)pages);
	}
	uint32_t sum = 0;
	for (uint64_t i = 0; i < pages; i++) {
		volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(base + i * 4096);
		uint64_t want = ((uint64_t)passes << 32) | i;
		if (w[0] != want || w[256] != ~want) {
			kprintf("mig-mem mismatch page=%llu got=0x%llx want=0x%llx\n",
				(unsigned long long)i, (unsigned long long)w[0], (unsigned long long)want);
			return "verify-mismatch";
		}
		sum = sum * 31 + (uint32_t)w[0];
	}
	kprintf("mig-mem verified pages=%llu sum=0x%08x\n", (unsigned long long)pages, sum);
	return hold("mig-mem");
}

static const struct {
	const char *name;
	test_fn fn;
} mig_tests[] = {
	{ "mig-blk-loop", test_mig_blk_loop },
	{ "mig-mem", test_mig_mem },
};

test_fn find_mig_test(const char *name)
{
	for (unsigned i = 0; i < sizeof(mig_tests) / sizeof(mig_tests[0]); i++)
		if (!kstrcmp(mig_tests[i].name, name))
			return mig_tests[i].fn;
	return NULL;
}
