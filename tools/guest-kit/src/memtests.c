/*
 * guest-kit: guest RAM above 4 GiB (test=mem-high).
 *
 * The kit's page tables map the first 4 GiB only. This test adds 4-8 GiB,
 * identity, 2 MiB pages (four page directories in .bss hung into the PDPT
 * that CR3 leads to), then writes and reads back RAM there. With blk=1 it
 * also has the virtio-blk device read disk sectors into buffers above 4 GiB:
 * one that crosses the 5 GiB boundary (the VMM holds guest RAM as 1 GiB host
 * buffers, so the device sees that buffer as two pieces) and one near the
 * top of the mapped RAM; and write from the crossing buffer.
 *
 * Disk pattern as in blktests.c: byte i of sector s is (s * 31 + i * 7 + seed) & 0xff.
 * Parameters: blk=1, lba=N (where the host put its pattern, 32 sectors),
 * seed=N (its seed), wlba=N (16 sectors the test writes with seed + 1).
 * rounds=N: then N rounds (snapshot or migrate in the middle of them), each
 * checking that the words above 4 GiB hold the previous round's values and
 * writing this round's, printing "mem-high round=R", `delay` spins apart.
 */
#include "virtio.h"

#define GiB          (1ULL << 30)
#define MAP_END      (8 * GiB)
#define PTE_P        0x001ULL
#define PTE_RW       0x002ULL
#define PTE_PS       0x080ULL
#define PTE_ADDR     0x000ffffffffff000ULL
#define IO_SECTORS   16
#define IO_BYTES     (IO_SECTORS * SECTOR_SIZE)

static uint64_t high_pd[4][512] __attribute__((aligned(4096)));
static uint8_t low_buf[IO_BYTES] __attribute__((aligned(4096)));

static uint64_t read_cr3(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr3, %0" : "=r"(v));
	return v;
}

static void write_cr3(uint64_t v)
{
	__asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory");
}

/* Identity-maps [4 GiB, 8 GiB) into the live page tables (PML4 entry 0's PDPT, entries 4-7). */
static void map_4g_to_8g(void)
{
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & PTE_ADDR);
	uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & PTE_ADDR);
	for (unsigned g = 0; g < 4; g++) {
		for (unsigned i = 0; i < 512; i++)
			high_pd[g][i] = ((4 + g) * GiB + ((uint64_t)i << 21)) | PTE_P | PTE_RW | PTE_PS;
		pdpt[4 + g] = (uintptr_t)high_pd[g] | PTE_P | PTE_RW;
	}
	write_cr3(read_cr3());	/* flush the TLB */
}

static void fill_pattern(uint8_t *buf, uint64_t lba, unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7)
			buf[s * SECTOR_SIZE + i] = v;
	}
}

static int check_pattern(const char *tag, const uint8_t *buf, uint64_t lba, unsigned sectors, unsigned seed)
{
	for (unsigned s = 0; s < sectors; s++) {
		uint8_t v = (uint8_t)((lba + s) * 31 + seed);
		for (unsigned i = 0; i < SECTOR_SIZE; i++, v += 7) {
			uint8_t got = buf[s * SECTOR_SIZE + i];
			if (got != v) {
				kprintf("mem-high %s mismatch at=0x%llx lba=%llu offset=%u got=0x%02x want=0x%02x\n", tag,
					(unsigned long long)(uintptr_t)(buf + s * SECTOR_SIZE + i),
					(unsigned long long)(lba + s), i, got, v);
				return 1;
			}
		}
	}
	return 0;
}

/* Reads IO_SECTORS from `lba` into `buf` (cleared first) and checks the host's pattern. */
static const char *read_into(struct vq *q, const char *tag, uint8_t *buf, uint64_t lba, unsigned seed)
{
	memset(buf, 0, IO_BYTES);
	const char *r = blk_rw(q, 0, lba, buf, IO_SECTORS);
	if (r)
		return r;
	if (check_pattern(tag, buf, lba, IO_SECTORS, seed))
		return "blk-read-mismatch";
	kprintf("mem-high blk-read %s ok addr=0x%llx bytes=%u\n", tag, (unsigned long long)(uintptr_t)buf, IO_BYTES);
	return NULL;
}

static const char *test_mem_high(void)
{
	uint64_t top = 0;
	for (unsigned i = 0; i < boot.nmem; i++)
		if (boot.mem[i].type == 1 && boot.mem[i].base == 4 * GiB)
			top = boot.mem[i].base + boot.mem[i].size;
	kprintf("mem-high ram-above-4g end=0x%llx\n", (unsigned long long)top);
	if (top < 5 * GiB + 2 * IO_BYTES)
		return "no-ram-across-5g";
	uint64_t end = top < MAP_END ? top : MAP_END;
	map_4g_to_8g();

	/* CPU writes and reads above 4 GiB: first bytes, both sides of 5 GiB, a word across it, the end. */
	const uint64_t at[] = { 4 * GiB, 4 * GiB + 4088, 5 * GiB - 16, 5 * GiB - 4, 5 * GiB + 8, end - 8 };
	const unsigned n = sizeof(at) / sizeof(at[0]);
	for (unsigned i = 0; i < n; i++)
		*(volatile uint64_t *)(uintptr_t)at[i] = at[i] ^ 0x5a5aa5a5c3c33c3cULL;
	for (unsigned i = 0; i < n; i++) {
		uint64_t got = *(volatile uint64_t *)(uintptr_t)at[i];
		if (got != (at[i] ^ 0x5a5aa5a5c3c33c3cULL)) {
			kprintf("mem-high cpu mismatch at=0x%llx got=0x%llx\n", (unsigned long long)at[i], (unsigned long long)got);
			return "cpu-readback-mismatch";
		}
	}
	kprintf("mem-high cpu write-read ok words=%u top=0x%llx\n", n, (unsigned long long)end);

	uint64_t rounds = param("rounds", 0), delay = param("delay", 100000);
	for (uint64_t r = 1; r <= rounds; r++) {
		for (unsigned i = 0; i < n; i++) {
			uint64_t want = at[i] ^ (r == 1 ? 0x5a5aa5a5c3c33c3cULL : (r - 1) * 0x9e3779b97f4a7c15ULL);
			uint64_t got = *(volatile uint64_t *)(uintptr_t)at[i];
			if (got != want) {
				kprintf("mem-high round=%llu mismatch at=0x%llx got=0x%llx want=0x%llx\n", (unsigned long long)r,
					(unsigned long long)at[i], (unsigned long long)got, (unsigned long long)want);
				return "round-mismatch";
			}
			*(volatile uint64_t *)(uintptr_t)at[i] = at[i] ^ (r * 0x9e3779b97f4a7c15ULL);
		}
		kprintf("mem-high round=%llu\n", (unsigned long long)r);
		for (volatile uint64_t k = 0; k < delay; k++)
			;
	}

	if (!param("blk", 0))
		return NULL;
	const char *r = vblk_open(1);
	if (r)
		return r;
	struct vq *q = &vblk.vd.q[0];
	uint64_t lba = param("lba", 0), wlba = param("wlba", 64);
	unsigned seed = param("seed", 1);
	uint8_t *cross = (uint8_t *)(uintptr_t)(5 * GiB - IO_BYTES / 2);	/* 4 KiB each side of 5 GiB */
	uint8_t *near_top = (uint8_t *)(uintptr_t)((end - 2 * IO_BYTES) & ~4095ULL);
	if ((r = read_into(q, "cross-5g", cross, lba, seed)) ||
	    (r = read_into(q, "near-top", near_top, lba + IO_SECTORS, seed)))
		return r;

	/* Write from the crossing buffer; read back into low RAM (the host checks the image too). */
	fill_pattern(cross, wlba, IO_SECTORS, seed + 1);
	if ((r = blk_rw(q, 1, wlba, cross, IO_SECTORS)))
		return r;
	memset(low_buf, 0, IO_BYTES);
	if ((r = blk_rw(q, 0, wlba, low_buf, IO_SECTORS)))
		return r;
	if (check_pattern("write-cross-5g", low_buf, wlba, IO_SECTORS, seed + 1))
		return "blk-write-mismatch";
	kprintf("mem-high blk-write cross-5g ok lba=%llu sectors=%u\n", (unsigned long long)wlba, IO_SECTORS);
	return NULL;
}

test_fn find_mem_test(const char *name)
{
	return !kstrcmp(name, "mem-high") ? test_mem_high : NULL;
}
