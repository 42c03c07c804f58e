/*
 * guest-kit: the tests, selected by test=NAME. Each returns NULL for PASS or
 * a reason string for FAIL. Loops stay short: CPL0 code may be emulated.
 */
#include "kit.h"

/* ---- pci-scan ---- */
static void pci_print_bars(unsigned d, unsigned f)
{
	uint16_t cmd = pci_read16(0, d, f, 0x04);

	/* Stop I/O and memory decode while the BARs hold all-ones. */
	pci_write16(0, d, f, 0x04, cmd & ~3u);
	for (unsigned i = 0; i < 6; i++) {
		unsigned bar = i, off = 0x10 + 4 * i;
		uint32_t orig = pci_read32(0, d, f, off);
		pci_write32(0, d, f, off, 0xffffffffu);
		uint32_t probe = pci_read32(0, d, f, off);
		pci_write32(0, d, f, off, orig);

		if (orig & 1) {		/* I/O BAR */
			uint32_t mask = probe & ~3u;
			if (!mask)
				continue;
			if (!(mask & 0xffff0000u))	/* 16-bit decoder */
				mask |= 0xffff0000u;
			kprintf("pci: 00:%02x.%x bar=%u kind=io addr=0x%x size=0x%x\n",
				d, f, bar, orig & ~3u, ~mask + 1);
			continue;
		}

		uint64_t addr = orig & ~0xfu, mask = probe & ~0xfu;
		int is64 = ((orig >> 1) & 3) == 2 && i < 5;
		if (is64) {
			uint32_t orig_hi = pci_read32(0, d, f, off + 4);
			pci_write32(0, d, f, off + 4, 0xffffffffu);
			uint32_t probe_hi = pci_read32(0, d, f, off + 4);
			pci_write32(0, d, f, off + 4, orig_hi);
			addr |= (uint64_t)orig_hi << 32;
			mask |= (uint64_t)probe_hi << 32;
			i++;		/* the next slot is our upper half */
		}
		if (!mask)
			continue;
		if (!is64)
			mask |= 0xffffffff00000000ull;
		kprintf("pci: 00:%02x.%x bar=%u kind=%s addr=0x%llx size=0x%llx\n",
			d, f, bar, is64 ? "mem64" : "mem32",
			(unsigned long long)addr, (unsigned long long)(~mask + 1));
	}
	pci_write16(0, d, f, 0x04, cmd);
}

static void pci_print_caps(unsigned d, unsigned f)
{
	if (!(pci_read16(0, d, f, 0x06) & (1u << 4)))
		return;
	unsigned ptr = pci_read8(0, d, f, 0x34) & 0xfc;
	/* At most 48 capabilities fit in 192 bytes; guards against loops. */
	for (unsigned n = 0; ptr && n < 48; n++) {
		kprintf("pci: 00:%02x.%x cap=0x%02x at=0x%02x\n", d, f,
			pci_read8(0, d, f, ptr), ptr);
		ptr = pci_read8(0, d, f, ptr + 1) & 0xfc;
	}
}

static const char *test_pci_scan(void)
{
	unsigned found = 0;

	for (unsigned d = 0; d < 32; d++) {
		if (pci_read16(0, d, 0, 0x00) == 0xffff)
			continue;
		unsigned nfn = (pci_read8(0, d, 0, 0x0e) & 0x80) ? 8 : 1;
		for (unsigned f = 0; f < nfn; f++) {
			uint16_t vendor = pci_read16(0, d, f, 0x00);
			if (vendor == 0xffff)
				continue;
			uint8_t hdr = pci_read8(0, d, f, 0x0e);
			kprintf("pci: 00:%02x.%x vendor=0x%04x device=0x%04x class=0x%06x hdr=0x%02x\n",
				d, f, vendor, pci_read16(0, d, f, 0x02),
				pci_read32(0, d, f, 0x08) >> 8, hdr);
			if ((hdr & 0x7f) == 0)
				pci_print_bars(d, f);
			pci_print_caps(d, f);
			found++;
		}
	}
	return found ? NULL : "no-devices";
}

/* ---- boot-info ---- */
static const char *test_boot_info(void)
{
	return NULL;
}

/* ---- pio-echo / mmio-echo: the host checks the printed values ---- */
static const uint64_t echo_values[4][4] = {
	{ 0x00, 0x5a, 0xa5, 0xff },
	{ 0x0000, 0x1234, 0xbeef, 0xffff },
	{ 0x00000000, 0x12345678, 0xdeadbeef, 0xffffffff },
	{ 0, 0x0123456789abcdefull, 0xfedcba9876543210ull, ~0ull },
};

static const char *test_pio_echo(void)
{
	for (unsigned s = 0; s < 3; s++) {
		unsigned size = 1u << s;
		for (unsigned i = 0; i < 4; i++) {
			uint64_t v = echo_values[s][i], r;
			switch (size) {
			case 1: outb(PORT_ECHO, v); r = inb(PORT_ECHO); break;
			case 2: outw(PORT_ECHO, v); r = inw(PORT_ECHO); break;
			default: outl(PORT_ECHO, v); r = inl(PORT_ECHO); break;
			}
			kprintf("pio-echo size=%u wrote=0x%0*llx read=0x%0*llx\n",
				size, (int)size * 2, (unsigned long long)v,
				(int)size * 2, (unsigned long long)r);
		}
	}
	return NULL;
}

static const char *test_mmio_echo(void)
{
	for (unsigned s = 0; s < 4; s++) {
		unsigned size = 1u << s;
		for (unsigned i = 0; i < 4; i++) {
			uint64_t v = echo_values[s][i], r;
			switch (size) {
			case 1:
				MMIO(uint8_t, MMIO_ECHO) = v;
				r = MMIO(uint8_t, MMIO_ECHO);
				break;
			case 2:
				MMIO(uint16_t, MMIO_ECHO) = v;
				r = MMIO(uint16_t, MMIO_ECHO);
				break;
			case 4:
				MMIO(uint32_t, MMIO_ECHO) = v;
				r = MMIO(uint32_t, MMIO_ECHO);
				break;
			default:
				MMIO(uint64_t, MMIO_ECHO) = v;
				r = MMIO(uint64_t, MMIO_ECHO);
				break;
			}
			kprintf("mmio-echo size=%u wrote=0x%0*llx read=0x%0*llx\n",
				size, (int)size * 2, (unsigned long long)v,
				(int)size * 2, (unsigned long long)r);
		}
	}
	return NULL;
}

/* ---- ioeventfd family: writes, then count to the sync port ---- */
static const char *test_ioeventfd(void)
{
	uint32_t n = param("count", 1000);
	for (uint32_t i = 0; i < n; i++)
		outl(PORT_IOEVENTFD, i);
	outl(PORT_SYNC, n);
	kprintf("ioeventfd writes=%u\n", n);
	return NULL;
}

static const char *test_ioeventfd_mmio(void)
{
	uint32_t n = param("count", 1000);
	for (uint32_t i = 0; i < n; i++)
		MMIO(uint32_t, MMIO_IOEVENTFD) = i;
	outl(PORT_SYNC, n);
	kprintf("ioeventfd-mmio writes=%u\n", n);
	return NULL;
}

static const char *test_ioeventfd_datamatch(void)
{
	uint32_t n = param("count", 1000);
	for (uint32_t i = 0; i < n; i++)
		outl(PORT_IOEVENTFD, 0x1234);
	for (uint32_t i = 0; i < n; i++)
		outl(PORT_IOEVENTFD, 0x5678);
	outl(PORT_SYNC, n);
	kprintf("ioeventfd-datamatch writes=%u\n", n);
	return NULL;
}

/* ---- interrupts: one at a time, paced by writes to the sync port ---- */
static void irq_handshake(uint8_t vec, uint32_t n)
{
	unsigned base = irq_count(vec);

	cli();
	outl(PORT_SYNC, 0);		/* ready for interrupt #1 */
	for (uint32_t k = 1; k <= n; k++) {
		/* Test with interrupts off; "sti; hlt" is atomic (STI shadow),
		 * so an interrupt cannot slip in between test and halt. */
		while (irq_count(vec) - base < k)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		outl(PORT_SYNC, k);	/* got #k: host may send the next */
	}
	sti();
}

static const char *test_irq_msi(void)
{
	uint32_t n = param("count", 5);

	lapic_enable();
	sti();
	kprintf("irq-msi ready vector=0x%x count=%u\n", VEC_MSI, n);
	unsigned base = irq_count(VEC_MSI);
	irq_handshake(VEC_MSI, n);
	kprintf("irq-msi received=%u\n", irq_count(VEC_MSI) - base);
	return NULL;
}

static const char *test_irq_ioapic(void)
{
	uint32_t n = param("count", 3);
	uint32_t gsi = param("gsi", 10);

	if (gsi > 23)
		return "gsi-out-of-range";
	lapic_enable();
	ioapic_route(gsi, VEC_IOAPIC, lapic_id());
	sti();
	kprintf("irq-ioapic ready vector=0x%x gsi=%u count=%u\n", VEC_IOAPIC,
		gsi, n);
	unsigned base = irq_count(VEC_IOAPIC);
	irq_handshake(VEC_IOAPIC, n);
	kprintf("irq-ioapic received=%u\n", irq_count(VEC_IOAPIC) - base);
	return NULL;
}

/* ---- exit-bench ---- */
static const char *test_exit_bench(void)
{
	uint32_t n = param("count", 100000);
	for (uint32_t i = 0; i < n; i++)
		outl(PORT_BENCH, i);
	kprintf("exit-bench done count=%u\n", n);
	return NULL;
}

/* ---- emul-fail ---- */
/*
 * POPCNT: plain integer instruction (no CR4/XCR0 setup needed, so a normal
 * host just runs it), but absent from this host's CPL0 emulator, which then
 * makes KVM_RUN fail with an emulation error. It lives in its own symbol so
 * the build's instruction check can allow exactly this one.
 */
uint32_t emul_fail_insn(uint32_t v);
__asm__(".text\n"
	".globl emul_fail_insn\n"
	".type emul_fail_insn, @function\n"
	"emul_fail_insn:\n"
	"\tpopcntl %edi, %eax\n"
	"\tret\n"
	".size emul_fail_insn, . - emul_fail_insn\n");

static const char *test_emul_fail(void)
{
	kprintf("emul-fail: executing unsupported instruction\n");
	uint32_t r = emul_fail_insn(0xf0f0);
	kprintf("emul-fail: instruction returned %u\n", r);
	return "instruction-ran";
}

/* ---- triple-fault ---- */
/*
 * An IDT with limit 0: the #UD from ud2 cannot be delivered (#GP), nor can
 * that (#DF), nor the double fault: the CPU shuts down. A VMM sees
 * KVM_EXIT_SHUTDOWN.
 */
static const char *test_triple_fault(void)
{
	static const struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} empty_idt = { 0, 0 };

	kprintf("triple-fault: now\n");
	cli();
	__asm__ volatile("lidt %0; ud2" : : "m"(empty_idt) : "memory");
	return "still-running";		/* not reached */
}

/* ---- reset: i8042 "pulse reset line" command ---- */
static const char *test_reset(void)
{
	kprintf("reset: now\n");
	cli();
	outb(0x64, 0xfe);
	/* A reset takes effect at once; give a slow one a little time. */
	for (volatile unsigned i = 0; i < 100000; i++)
		;
	return "still-running";
}

/* ---- exit ---- */
static const char *test_exit(void)
{
	uint32_t code = param("code", 0);
	kprintf("guest-kit: exit-test code=%u\n", code);
	guest_exit(code);
}

static const struct {
	const char *name;
	test_fn fn;
} tests[] = {
	{ "pci-scan", test_pci_scan },
	{ "boot-info", test_boot_info },
	{ "pio-echo", test_pio_echo },
	{ "mmio-echo", test_mmio_echo },
	{ "ioeventfd", test_ioeventfd },
	{ "ioeventfd-mmio", test_ioeventfd_mmio },
	{ "ioeventfd-datamatch", test_ioeventfd_datamatch },
	{ "irq-msi", test_irq_msi },
	{ "irq-ioapic", test_irq_ioapic },
	{ "exit-bench", test_exit_bench },
	{ "emul-fail", test_emul_fail },
	{ "exit", test_exit },
	{ "triple-fault", test_triple_fault },
	{ "reset", test_reset },
};

test_fn find_test(const char *name)
{
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
		if (!kstrcmp(tests[i].name, name))
			return tests[i].fn;
	test_fn fn = find_blk_test(name);
	return fn ? fn : find_net_test(name);
}
