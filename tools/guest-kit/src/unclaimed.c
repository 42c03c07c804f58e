/*
 * unclaimed: touches many distinct guest-physical addresses and ports that no
 * device claims (the host counts them per region and keeps its log bounded).
 *   count=N   MMIO addresses: one 32-bit write and one read each (default 4096)
 *   stride=S  bytes between them (default 0x1000: one per page)
 *   base=A    first address (default 0xe0000000, inside the unused PCI window)
 *   ports=N   ports from 0x5000: one byte written and read each (default 256)
 * Unclaimed reads must return all ones, like an empty bus.
 */
#include "kit.h"

static const char *test_unclaimed(void)
{
	uint64_t count = param("count", 4096), stride = param("stride", 0x1000);
	uint64_t base = param("base", 0xe0000000UL), ports = param("ports", 256);
	if (base + count * stride > 0xfe000000UL || ports > 0x1000)
		return "bad-params";
	for (uint64_t i = 0; i < count; i++) {
		uint64_t a = base + i * stride;
		MMIO(uint32_t, a) = (uint32_t)i;
		if (MMIO(uint32_t, a) != 0xffffffffu)
			return "mmio-read-not-all-ones";
	}
	for (uint64_t i = 0; i < ports; i++) {
		outb(0x5000 + i, (uint8_t)i);
		if (inb(0x5000 + i) != 0xff)
			return "pio-read-not-all-ones";
	}
	kprintf("unclaimed mmio=%llu pio=%llu\n", (unsigned long long)count, (unsigned long long)ports);
	return NULL;
}

test_fn find_unclaimed_test(const char *name)
{
	return kstrcmp(name, "unclaimed") ? NULL : test_unclaimed;
}
