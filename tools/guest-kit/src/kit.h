/* guest-kit: shared declarations for the freestanding test guest. */
#ifndef GUEST_KIT_H
#define GUEST_KIT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- test ports / addresses (the VMM's test devices) ---- */
#define PORT_EXIT       0xf4
#define PORT_ECHO       0x4000
#define PORT_IOEVENTFD  0x4010
#define PORT_SYNC       0x4020
#define PORT_BENCH      0x4030
#define MMIO_ECHO       0xfe000000UL
#define MMIO_IOEVENTFD  0xfe001000UL

#define LAPIC_BASE      0xfee00000UL
#define IOAPIC_BASE     0xfec00000UL

#define VEC_MSI         0x40
#define VEC_IOAPIC      0x41
#define VEC_TIMER       0x4e	/* LAPIC timer: the watchdog tick */
#define VEC_VIRTIO_CFG  0x4f	/* virtio config change (MSI-X entry 0) */
#define VEC_VIRTIO_Q0   0x50	/* virtio queue i: 0x50 + i (MSI-X entry 1 + i) */
#define VEC_VIRTIO_QMAX 16
#define VEC_SPURIOUS    0xff

#define EXIT_PASS       0
#define EXIT_FAIL       1
#define EXIT_EXCEPTION  3

/* ---- port and MMIO access ---- */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline void outw(uint16_t port, uint16_t v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}
static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* Volatile accesses of exactly the given width (one mov each). */
#define MMIO(type, addr) (*(volatile type *)(uintptr_t)(addr))

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }

/* Compiler barrier, and a full fence that this host's CPL0 emulator can run
 * (a locked read-modify-write on the stack instead of mfence). */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mb(void)
{
	__asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory", "cc");
}

/* ---- boot information, normalised from PVH or boot_params ---- */
#define CMDLINE_MAX  4096
#define MAX_MEM      128
#define MAX_MODULES  16

struct mem_range {
	uint64_t base, size;
	uint32_t type;
};

struct module {
	uint64_t addr, size;
};

struct boot_info {
	const char *via;
	char cmdline[CMDLINE_MAX];
	unsigned nmem;
	struct mem_range mem[MAX_MEM];
	unsigned nmod;
	struct module mod[MAX_MODULES];
};

extern struct boot_info boot;

/* ---- lib.c ---- */
void serial_init(void);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kvprintf(const char *fmt, va_list ap);
size_t kstrlen(const char *s);
int kstrcmp(const char *a, const char *b);
int parse_u64(const char *s, uint64_t *out);
uint32_t crc32(const void *buf, uint64_t len);
/* zlib.crc32(buf, crc): continues a CRC-32; crc32_update(0, b, n) == crc32(b, n) */
uint32_t crc32_update(uint32_t crc, const void *buf, uint64_t len);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* ---- main.c ---- */
__attribute__((noreturn)) void guest_exit(uint32_t code);
uint64_t param(const char *key, uint64_t dflt);
const char *param_str(const char *key, const char *dflt);
/* hold=1: prints PASS and `guest-kit: holding`, then parks (the host can still query the devices); else returns NULL. */
const char *hold(const char *name);

/* ---- hw.c ---- */
void idt_init(void);
unsigned irq_count(uint8_t vector);
void pic_disable(void);
void lapic_enable(void);
void lapic_eoi(void);
uint32_t lapic_id(void);
void lapic_timer_start(unsigned period_ms);
extern unsigned tick_ms;		/* watchdog tick period (lapic_timer_start) */
static inline unsigned ticks(void) { return irq_count(VEC_TIMER); }
static inline unsigned ms_to_ticks(uint64_t ms) { return (ms + tick_ms - 1) / tick_ms; }
void user_init(void);
/* entry.S: run fn(arg) at CPL3 on ustack_top; returns fn's result. */
uint64_t run_user(uint64_t (*fn)(void *), void *arg, void *ustack_top);
void ioapic_route(unsigned gsi, uint8_t vector, uint8_t dest_apic);

uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned off);
uint16_t pci_read16(unsigned bus, unsigned dev, unsigned fn, unsigned off);
uint8_t pci_read8(unsigned bus, unsigned dev, unsigned fn, unsigned off);
void pci_write32(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint32_t v);
void pci_write16(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint16_t v);
void pci_write8(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint8_t v);

/* ---- tests.c ---- */
/* Returns NULL on PASS, else a short reason (no spaces) for the FAIL line. */
typedef const char *(*test_fn)(void);
test_fn find_test(const char *name);

/* ---- blktests.c, nettests.c, scsitests.c ---- */
test_fn find_blk_test(const char *name);
test_fn find_net_test(const char *name);
test_fn find_scsi_test(const char *name);
test_fn find_mig_test(const char *name);
test_fn find_mem_test(const char *name);
test_fn find_hostile_test(const char *name);	/* hostile.c */
test_fn find_unclaimed_test(const char *name);	/* unclaimed.c */

#endif
