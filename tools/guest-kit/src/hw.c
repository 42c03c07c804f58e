/* guest-kit: IDT and interrupt dispatch, 8259 PIC, LAPIC, IOAPIC, PCI config. */
#include "kit.h"

/* ---- IDT ---- */
struct idt_entry {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;		/* 0x8e: present, DPL0, 64-bit interrupt gate */
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
} __attribute__((packed));

/* Pushed by entry.S isr_common, lowest address first. */
struct isr_frame {
	uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	uint64_t vec, err;
	uint64_t rip, cs, rflags, rsp, ss;
};

extern char isr_stubs[];	/* 256 stubs, 16 bytes apart */
static struct idt_entry idt[256] __attribute__((aligned(16)));
static volatile unsigned irq_counts[256];

void idt_init(void)
{
	for (unsigned v = 0; v < 256; v++) {
		uint64_t a = (uintptr_t)isr_stubs + 16 * v;
		idt[v] = (struct idt_entry){
			.off_lo = (uint16_t)a,
			.sel = 0x08,
			.type = 0x8e,
			.off_mid = (uint16_t)(a >> 16),
			.off_hi = (uint32_t)(a >> 32),
		};
	}
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr = { sizeof(idt) - 1, (uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

unsigned irq_count(uint8_t vector)
{
	return irq_counts[vector];
}

void isr_dispatch(struct isr_frame *f);
__attribute__((noreturn)) void user_return(uint64_t value);	/* entry.S */
extern char user_exit_insn[];					/* entry.S */

void isr_dispatch(struct isr_frame *f)
{
	static int in_exception;

	/* run_user's way back from ring 3 (entry.S): ud2 at user_exit_insn. */
	if (f->vec == 6 && (f->cs & 3) == 3 && f->rip == (uintptr_t)user_exit_insn)
		user_return(f->rdi);	/* does not return */

	if (f->vec < 32) {
		if (in_exception++) {	/* faulted while reporting: just leave */
			outl(PORT_EXIT, EXIT_EXCEPTION);
			for (;;)
				__asm__ volatile("cli; hlt");
		}
		kprintf("guest-kit: exception vec=%llu err=0x%llx rip=0x%llx\n",
			(unsigned long long)f->vec, (unsigned long long)f->err,
			(unsigned long long)f->rip);
		if (f->vec == 14) {
			uint64_t cr2;
			__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
			kprintf("guest-kit: exception cr2=0x%llx\n",
				(unsigned long long)cr2);
		}
		guest_exit(EXIT_EXCEPTION);
	}

	irq_counts[f->vec]++;
	if (f->vec >= VEC_VIRTIO_Q0 && f->vec < VEC_VIRTIO_Q0 + VEC_VIRTIO_QMAX) {
		lapic_eoi();
		return;
	}
	switch (f->vec) {
	case VEC_SPURIOUS:	/* LAPIC spurious: no EOI */
		break;
	case VEC_MSI:
	case VEC_IOAPIC:
	case VEC_TIMER:
	case VEC_VIRTIO_CFG:
		lapic_eoi();
		break;
	default:
		kprintf("guest-kit: unexpected interrupt vec=%llu\n",
			(unsigned long long)f->vec);
		lapic_eoi();
		break;
	}
}

/* ---- TSS: the stack for interrupts taken in ring 3 (run_user) ---- */
struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));

extern uint64_t gdt[];		/* entry.S; 0x28 is the TSS slot */
#define SEL_TSS 0x28
static struct tss64 tss __attribute__((aligned(16)));
static uint8_t trap_stack[16384] __attribute__((aligned(16)));

void user_init(void)
{
	static int done;
	if (done)
		return;
	done = 1;
	tss.rsp[0] = (uintptr_t)trap_stack + sizeof(trap_stack);
	tss.iomap_base = sizeof(tss);	/* no I/O bitmap: IOPL=3 decides */
	uint64_t base = (uintptr_t)&tss, limit = sizeof(tss) - 1;
	gdt[SEL_TSS / 8] = (limit & 0xffff) | (base & 0xffffff) << 16 |
			   0x89ull << 40 |	/* present, 64-bit TSS available */
			   ((limit >> 16) & 0xf) << 48 |
			   ((base >> 24) & 0xff) << 56;
	gdt[SEL_TSS / 8 + 1] = base >> 32;
	__asm__ volatile("ltr %w0" : : "r"(SEL_TSS) : "memory");
}

/* ---- 8259 PIC: mask everything so legacy IRQs (e.g. the PIT, which a BIOS
 * may leave routed to vector 8) never reach us. ---- */
void pic_disable(void)
{
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
}

/* ---- LAPIC (xAPIC MMIO); registers must be accessed as 32-bit ---- */
#define LAPIC_ID     0x020
#define LAPIC_TPR    0x080
#define LAPIC_EOI    0x0b0
#define LAPIC_SVR    0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV  0x3e0
#define LVT_MASKED   (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define SVR_ENABLE   (1u << 8)

static inline uint32_t lapic_read(unsigned reg)
{
	return MMIO(uint32_t, LAPIC_BASE + reg);
}

static inline void lapic_write(unsigned reg, uint32_t v)
{
	MMIO(uint32_t, LAPIC_BASE + reg) = v;
}

void lapic_enable(void)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, SVR_ENABLE | VEC_SPURIOUS);
}

/*
 * Periodic LAPIC timer on VEC_TIMER, used as a watchdog tick by waits that
 * halt. Assumes KVM's in-kernel LAPIC timer rate (1 GHz bus clock, divided
 * by 16 here); elsewhere only the tick length changes.
 */
unsigned tick_ms = 10;

void lapic_timer_start(unsigned period_ms)
{
	tick_ms = period_ms;
	lapic_write(LAPIC_TIMER_DIV, 0x3);		/* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, period_ms * 62500u);
}

void lapic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

uint32_t lapic_id(void)
{
	return lapic_read(LAPIC_ID) >> 24;
}

/* ---- IOAPIC: index/data window ---- */
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN    0x10
#define IOAPIC_REDTBL(n) (0x10 + 2 * (n))

static void ioapic_write(uint8_t reg, uint32_t v)
{
	MMIO(uint32_t, IOAPIC_BASE + IOAPIC_REGSEL) = reg;
	MMIO(uint32_t, IOAPIC_BASE + IOAPIC_WIN) = v;
}

/* Fixed delivery, physical destination, edge triggered, active high,
 * unmasked. The high word (destination) is written first so the entry is
 * never live with a stale destination. */
void ioapic_route(unsigned gsi, uint8_t vector, uint8_t dest_apic)
{
	ioapic_write(IOAPIC_REDTBL(gsi) + 1, (uint32_t)dest_apic << 24);
	ioapic_write(IOAPIC_REDTBL(gsi), vector);
}

/* ---- PCI configuration mechanism #1 ---- */
#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc

static void pci_select(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	outl(PCI_ADDR, 0x80000000u | bus << 16 | dev << 11 | fn << 8 |
			       (off & 0xfc));
}

uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	pci_select(bus, dev, fn, off);
	return inl(PCI_DATA);
}

uint16_t pci_read16(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	pci_select(bus, dev, fn, off);
	return inw(PCI_DATA + (off & 2));
}

uint8_t pci_read8(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	pci_select(bus, dev, fn, off);
	return inb(PCI_DATA + (off & 3));
}

void pci_write32(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint32_t v)
{
	pci_select(bus, dev, fn, off);
	outl(PCI_DATA, v);
}

void pci_write16(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint16_t v)
{
	pci_select(bus, dev, fn, off);
	outw(PCI_DATA + (off & 2), v);
}

void pci_write8(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint8_t v)
{
	pci_select(bus, dev, fn, off);
	outb(PCI_DATA + (off & 3), v);
}
