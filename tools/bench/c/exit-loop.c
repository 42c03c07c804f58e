/*
 * exit-loop: the smallest useful KVM "VMM", used as the C baseline for the
 * exit-path benchmark (tools/bench/exit-bench.js).
 *
 * It boots a PVH ELF (tools/guest-kit/build/guest.elf) the way apps/vmm does
 * for PVH kernels and then runs a plain single-threaded KVM_RUN loop that
 * handles every userspace exit inline. Nothing here is shared with the
 * TypeScript VMM: it exists so the VMM's per-exit cost can be compared with
 * "ioctl returns, switch on exit_reason, ioctl again".
 *
 *   usage: exit-loop [-v] GUEST_ELF "CMDLINE"
 *     -v   copy the guest's serial output (COM1 THR) to stdout
 *
 * At the end it prints "exits=<n> port4030=<n> exitcode=<code>" on stderr
 * and exits with the guest's exit-port code (low 8 bits).
 *
 * Build: gcc -O2 -Wall -Wextra -o exit-loop exit-loop.c
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- guest-physical layout (same addresses apps/vmm uses for PVH) ---- */
#define RAM_SIZE        (64ULL << 20)
#define GDT_PADDR       0x500ULL
#define START_INFO      0x6000ULL
#define MEMMAP_PADDR    0x6100ULL
#define CMDLINE_PADDR   0x20000ULL
#define CMDLINE_LIMIT   0x10000ULL
#define EBDA_START      0x9fc00ULL
#define HIGH_MEM_START  0x100000ULL
#define IDENT_MAP_ADDR  0xfeffc000ULL
#define TSS_ADDR        0xfeffd000UL

/* ---- hvm_start_info (Xen public ABI, version 1); offsets in bytes ---- */
#define HVM_MAGIC         0x336ec578u
#define SI_OFF_MAGIC      0x00
#define SI_OFF_VERSION    0x04
#define SI_OFF_FLAGS      0x08
#define SI_OFF_NR_MODULES 0x0c
#define SI_OFF_MODLIST    0x10
#define SI_OFF_CMDLINE    0x18
#define SI_OFF_RSDP       0x20
#define SI_OFF_MEMMAP     0x28
#define SI_OFF_MEMMAP_NR  0x30
#define SI_SIZE           0x38
#define MEMMAP_ENT_SIZE   24
#define E820_TYPE_RAM     1

#define XEN_NOTE_PHYS32_ENTRY 18

/* ---- ports this loop cares about ---- */
#define COM1_BASE    0x3f8
#define COM1_LAST    0x3ff
#define BENCH_PORT   0x4030
#define EXIT_PORT    0xf4
#define PCI_CONF_LO  0xcf8
#define PCI_CONF_HI  0xcff

/* Segment selectors in our boot GDT (Linux's boot CS/DS convention). */
#define SEL_CODE 0x10
#define SEL_DATA 0x18

static uint8_t *ram;
static int verbose;

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("exit-loop: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static void die_errno(const char *what)
{
	die("%s: %s", what, strerror(errno));
}

/* Little-endian stores into guest RAM (x86 host, but stay explicit). */
static void put_u32(uint64_t gpa, uint32_t v)
{
	memcpy(ram + gpa, &v, sizeof(v));
}

static void put_u64(uint64_t gpa, uint64_t v)
{
	memcpy(ram + gpa, &v, sizeof(v));
}

/* True when [gpa, gpa+len) lies inside guest RAM (no overflow). */
static int in_ram(uint64_t gpa, uint64_t len)
{
	return gpa <= RAM_SIZE && len <= RAM_SIZE - gpa;
}

/* ---- ELF loading ---- */

static uint8_t *read_whole_file(const char *path, size_t *len_out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		die_errno("fstat");
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		die("out of memory reading %s", path);
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die("%s: short read", path);
		got += (size_t)r;
	}
	close(fd);
	*len_out = len;
	return buf;
}

/* Walks one PT_NOTE segment looking for the Xen PHYS32_ENTRY note. */
static int find_pvh_entry(const uint8_t *p, size_t len, uint64_t *entry)
{
	size_t off = 0;

	while (len - off >= sizeof(Elf64_Nhdr)) {
		Elf64_Nhdr nh;
		memcpy(&nh, p + off, sizeof(nh));
		off += sizeof(nh);
		size_t name_len = ((size_t)nh.n_namesz + 3) & ~(size_t)3;
		size_t desc_len = ((size_t)nh.n_descsz + 3) & ~(size_t)3;
		if (name_len > len - off || desc_len > len - off - name_len)
			return 0;	/* truncated note */
		const char *name = (const char *)(p + off);
		const uint8_t *desc = p + off + name_len;
		int is_xen = nh.n_namesz == 4 && memcmp(name, "Xen", 4) == 0;
		if (is_xen && nh.n_type == XEN_NOTE_PHYS32_ENTRY) {
			if (nh.n_descsz == 4) {
				uint32_t v;
				memcpy(&v, desc, 4);
				*entry = v;
				return 1;
			}
			if (nh.n_descsz == 8) {
				uint64_t v;
				memcpy(&v, desc, 8);
				*entry = v;
				return 1;
			}
			return 0;
		}
		off += name_len + desc_len;
	}
	return 0;
}

/* Copies the PT_LOAD segments into RAM; returns the PVH 32-bit entry. */
static uint64_t load_pvh_elf(const char *path)
{
	size_t flen;
	uint8_t *f = read_whole_file(path, &flen);

	if (flen < sizeof(Elf64_Ehdr) || memcmp(f, ELFMAG, SELFMAG) != 0)
		die("%s: not an ELF file", path);
	Elf64_Ehdr eh;
	memcpy(&eh, f, sizeof(eh));
	if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
	    eh.e_machine != EM_X86_64)
		die("%s: want a little-endian ELF64 x86-64 image", path);
	if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff > flen ||
	    (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > flen - eh.e_phoff)
		die("%s: bad program header table", path);

	uint64_t entry = 0;
	int have_entry = 0, nload = 0;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		memcpy(&ph, f + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
		if (ph.p_offset > flen || ph.p_filesz > flen - ph.p_offset)
			die("%s: segment %u lies outside the file", path, i);
		if (ph.p_type == PT_LOAD) {
			if (ph.p_filesz > ph.p_memsz || !in_ram(ph.p_paddr, ph.p_memsz))
				die("%s: segment %u (paddr 0x%llx, memsz 0x%llx) does not fit in RAM",
				    path, i, (unsigned long long)ph.p_paddr,
				    (unsigned long long)ph.p_memsz);
			memcpy(ram + ph.p_paddr, f + ph.p_offset, ph.p_filesz);
			memset(ram + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
			nload++;
		} else if (ph.p_type == PT_NOTE && !have_entry) {
			have_entry = find_pvh_entry(f + ph.p_offset, ph.p_filesz, &entry);
		}
	}
	free(f);
	if (!nload)
		die("%s: no PT_LOAD segments", path);
	if (!have_entry)
		die("%s: no Xen PHYS32_ENTRY note (not a PVH image)", path);
	if (entry >= RAM_SIZE)
		die("%s: PVH entry 0x%llx is outside RAM", path, (unsigned long long)entry);
	return entry;
}

/* ---- boot data ---- */

static void write_start_info(const char *cmdline)
{
	size_t clen = strlen(cmdline);
	if (clen + 1 > CMDLINE_LIMIT)
		die("command line too long (%zu bytes)", clen);
	memcpy(ram + CMDLINE_PADDR, cmdline, clen + 1);

	/* Two RAM ranges: conventional memory below the EBDA, then 1 MiB up. */
	memset(ram + MEMMAP_PADDR, 0, 2 * MEMMAP_ENT_SIZE);
	put_u64(MEMMAP_PADDR + 0, 0);
	put_u64(MEMMAP_PADDR + 8, EBDA_START);
	put_u32(MEMMAP_PADDR + 16, E820_TYPE_RAM);
	put_u64(MEMMAP_PADDR + MEMMAP_ENT_SIZE + 0, HIGH_MEM_START);
	put_u64(MEMMAP_PADDR + MEMMAP_ENT_SIZE + 8, RAM_SIZE - HIGH_MEM_START);
	put_u32(MEMMAP_PADDR + MEMMAP_ENT_SIZE + 16, E820_TYPE_RAM);

	memset(ram + START_INFO, 0, SI_SIZE);
	put_u32(START_INFO + SI_OFF_MAGIC, HVM_MAGIC);
	put_u32(START_INFO + SI_OFF_VERSION, 1);
	put_u32(START_INFO + SI_OFF_FLAGS, 0);
	put_u32(START_INFO + SI_OFF_NR_MODULES, 0);
	put_u64(START_INFO + SI_OFF_MODLIST, 0);
	put_u64(START_INFO + SI_OFF_CMDLINE, CMDLINE_PADDR);
	put_u64(START_INFO + SI_OFF_RSDP, 0);
	put_u64(START_INFO + SI_OFF_MEMMAP, MEMMAP_PADDR);
	put_u32(START_INFO + SI_OFF_MEMMAP_NR, 2);
}

/*
 * Builds an 8-byte GDT descriptor. `access` is the access byte (P, DPL, S,
 * type) and `flags` the high nibble (G, D/B, L, AVL).
 */
static uint64_t gdt_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
	uint64_t d = 0;
	d |= (uint64_t)(limit & 0xffff);
	d |= (uint64_t)(base & 0xffffff) << 16;
	d |= (uint64_t)access << 40;
	d |= (uint64_t)((limit >> 16) & 0xf) << 48;
	d |= (uint64_t)(flags & 0xf) << 52;
	d |= (uint64_t)(base >> 24) << 56;
	return d;
}

static struct kvm_segment flat_segment(uint16_t sel, uint8_t type)
{
	struct kvm_segment s;
	memset(&s, 0, sizeof(s));
	s.base = 0;
	s.limit = 0xffffffff;
	s.selector = sel;
	s.type = type;
	s.present = 1;
	s.dpl = 0;
	s.db = 1;
	s.s = 1;
	s.l = 0;
	s.g = 1;
	return s;
}

static void setup_cpuid(int kvm, int vcpu)
{
	unsigned nent = 64;
	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			die("out of memory for CPUID");
		c->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			if (ioctl(vcpu, KVM_SET_CPUID2, c) < 0)
				die_errno("KVM_SET_CPUID2");
			free(c);
			return;
		}
		int err = errno;
		free(c);
		if (err != E2BIG || nent >= 4096) {
			errno = err;
			die_errno("KVM_GET_SUPPORTED_CPUID");
		}
		nent *= 2;
	}
}

static void setup_boot_cpu(int vcpu, uint64_t entry)
{
	/* GDT: 0x00 null, 0x08 null, 0x10 flat 32-bit code, 0x18 flat data. */
	put_u64(GDT_PADDR + 0x00, 0);
	put_u64(GDT_PADDR + 0x08, 0);
	put_u64(GDT_PADDR + SEL_CODE, gdt_descriptor(0, 0xfffff, 0x9b, 0xc));
	put_u64(GDT_PADDR + SEL_DATA, gdt_descriptor(0, 0xfffff, 0x93, 0xc));

	struct kvm_sregs sr;
	if (ioctl(vcpu, KVM_GET_SREGS, &sr) < 0)
		die_errno("KVM_GET_SREGS");
	sr.cs = flat_segment(SEL_CODE, 0xb);
	sr.ds = flat_segment(SEL_DATA, 0x3);
	sr.es = sr.ds;
	sr.fs = sr.ds;
	sr.gs = sr.ds;
	sr.ss = sr.ds;

	/* A present busy 32-bit TSS and an LDT keep VMX's entry checks happy. */
	memset(&sr.tr, 0, sizeof(sr.tr));
	sr.tr.limit = 0xffff;
	sr.tr.type = 0xb;
	sr.tr.present = 1;
	memset(&sr.ldt, 0, sizeof(sr.ldt));
	sr.ldt.limit = 0xffff;
	sr.ldt.type = 0x2;
	sr.ldt.present = 1;

	sr.gdt.base = GDT_PADDR;
	sr.gdt.limit = 4 * 8 - 1;
	sr.idt.base = 0;
	sr.idt.limit = 0;
	sr.cr0 = 0x11;		/* PE | ET */
	sr.cr3 = 0;
	sr.cr4 = 0;
	sr.efer = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sr) < 0)
		die_errno("KVM_SET_SREGS");

	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rip = entry;
	r.rbx = START_INFO;
	r.rflags = 0x2;
	if (ioctl(vcpu, KVM_SET_REGS, &r) < 0)
		die_errno("KVM_SET_REGS");

	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	if (ioctl(vcpu, KVM_SET_FPU, &fpu) < 0)
		die_errno("KVM_SET_FPU");
}

/* ---- exit handling ---- */

struct counters {
	uint64_t exits;
	uint64_t bench_writes;
};

static uint8_t uart_lcr;	/* bit 7 (DLAB) turns offsets 0/1 into the divisor */

static uint64_t load_le(const uint8_t *p, unsigned size)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < size; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void serial_out(unsigned reg, uint8_t v)
{
	if (reg == 3) {
		uart_lcr = v;
		return;
	}
	if (reg == 0 && !(uart_lcr & 0x80) && verbose) {
		ssize_t w;
		do
			w = write(STDOUT_FILENO, &v, 1);
		while (w < 0 && errno == EINTR);
	}
}

static uint8_t serial_in(unsigned reg)
{
	switch (reg) {
	case 3:
		return uart_lcr;
	case 5:
		return 0x60;	/* LSR: THR empty, transmitter idle */
	default:
		return 0;
	}
}

/* One KVM_EXIT_IO. Returns 1 and sets *code when the guest wrote the exit port. */
static int handle_io(struct kvm_run *run, struct counters *ctr, uint32_t *code)
{
	uint16_t port = run->io.port;
	unsigned size = run->io.size;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	int is_out = run->io.direction == KVM_EXIT_IO_OUT;

	/* String I/O arrives as `count` consecutive items of `size` bytes. */
	for (uint32_t n = 0; n < run->io.count; n++, data += size) {
		if (port >= COM1_BASE && port <= COM1_LAST) {
			unsigned reg = port - COM1_BASE;
			if (is_out)
				serial_out(reg, data[0]);
			else {
				memset(data, 0, size);
				data[0] = serial_in(reg);
			}
		} else if (port == BENCH_PORT) {
			if (is_out)
				ctr->bench_writes++;
			else
				memset(data, 0, size);
		} else if (port == EXIT_PORT) {
			if (is_out) {
				*code = (uint32_t)load_le(data, size);
				return 1;
			}
			memset(data, 0, size);
		} else if (port >= PCI_CONF_LO && port <= PCI_CONF_HI) {
			if (!is_out)
				memset(data, 0xff, size);	/* no host bridge: all ones */
		} else if (!is_out) {
			memset(data, 0xff, size);	/* nothing decodes this port */
		}
	}
	return 0;
}

static void report_rip(int vcpu)
{
	struct kvm_regs r;
	if (ioctl(vcpu, KVM_GET_REGS, &r) == 0)
		fprintf(stderr, "exit-loop: rip=0x%llx rsp=0x%llx rflags=0x%llx\n",
			(unsigned long long)r.rip, (unsigned long long)r.rsp,
			(unsigned long long)r.rflags);
}

static void print_stats(const struct counters *ctr, const char *code)
{
	fprintf(stderr, "exits=%llu port4030=%llu exitcode=%s\n",
		(unsigned long long)ctr->exits,
		(unsigned long long)ctr->bench_writes, code);
}

static int fail(int vcpu, const struct counters *ctr, const char *fmt, ...)
{
	va_list ap;

	fputs("exit-loop: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	report_rip(vcpu);
	print_stats(ctr, "none");
	return 1;
}

static int run_loop(int vcpu, struct kvm_run *run)
{
	struct counters ctr = { 0, 0 };
	uint32_t code = 0;

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return fail(vcpu, &ctr, "KVM_RUN: %s", strerror(errno));
		}
		ctr.exits++;

		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (handle_io(run, &ctr, &code)) {
				char buf[16];
				snprintf(buf, sizeof(buf), "%u", code);
				print_stats(&ctr, buf);
				return (int)(code & 0xff);
			}
			break;
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0, sizeof(run->mmio.data));
			break;
		case KVM_EXIT_HLT:
			return fail(vcpu, &ctr, "guest halted (KVM_EXIT_HLT)");
		case KVM_EXIT_SHUTDOWN:
			return fail(vcpu, &ctr, "guest shut down (triple fault)");
		case KVM_EXIT_FAIL_ENTRY:
			return fail(vcpu, &ctr, "VM entry failed, hardware reason 0x%llx",
				    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		case KVM_EXIT_INTERNAL_ERROR: {
			char extra[16 * 20 + 32] = "";
			size_t used = 0;
			if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION &&
			    run->emulation_failure.ndata >= 2 &&
			    (run->emulation_failure.flags &
			     KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
				unsigned len = run->emulation_failure.insn_size;
				if (len > 15)
					len = 15;
				used += (size_t)snprintf(extra, sizeof(extra), ", instruction bytes:");
				for (unsigned i = 0; i < len; i++)
					used += (size_t)snprintf(extra + used, sizeof(extra) - used, " %02x",
								 run->emulation_failure.insn_bytes[i]);
			} else {
				unsigned nd = run->internal.ndata;
				if (nd > 16)
					nd = 16;
				used += (size_t)snprintf(extra, sizeof(extra), ", data:");
				for (unsigned i = 0; i < nd && used < sizeof(extra); i++)
					used += (size_t)snprintf(extra + used, sizeof(extra) - used, " 0x%llx",
								 (unsigned long long)run->internal.data[i]);
			}
			return fail(vcpu, &ctr, "KVM internal error, suberror %u%s%s",
				    run->internal.suberror,
				    run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
					    ? " (emulation failure)" : "",
				    extra);
		}
		default:
			return fail(vcpu, &ctr, "unhandled exit reason %u", run->exit_reason);
		}
	}
}

int main(int argc, char **argv)
{
	int argi = 1;
	if (argi < argc && strcmp(argv[argi], "-v") == 0) {
		verbose = 1;
		argi++;
	}
	if (argc - argi != 2) {
		fprintf(stderr, "usage: %s [-v] GUEST_ELF \"CMDLINE\"\n", argv[0]);
		return 2;
	}
	const char *elf_path = argv[argi];
	const char *cmdline = argv[argi + 1];

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die_errno("/dev/kvm");
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		die("KVM API version %d, want %d", api, KVM_API_VERSION);

	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die_errno("KVM_CREATE_VM");

	uint64_t ident = IDENT_MAP_ADDR;
	if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0)
		die_errno("KVM_SET_IDENTITY_MAP_ADDR");
	if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
		die_errno("KVM_SET_TSS_ADDR");
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
		die_errno("KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit;
	memset(&pit, 0, sizeof(pit));
	pit.flags = KVM_PIT_SPEAKER_DUMMY;
	if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0)
		die_errno("KVM_CREATE_PIT2");

	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die_errno("mmap guest RAM");
	struct kvm_userspace_memory_region region;
	memset(&region, 0, sizeof(region));
	region.slot = 0;
	region.guest_phys_addr = 0;
	region.memory_size = RAM_SIZE;
	region.userspace_addr = (uint64_t)(uintptr_t)ram;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die_errno("KVM_SET_USER_MEMORY_REGION");

	uint64_t entry = load_pvh_elf(elf_path);
	write_start_info(cmdline);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die_errno("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die_errno("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE,
				   MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die_errno("mmap kvm_run");

	setup_cpuid(kvm, vcpu);
	setup_boot_cpu(vcpu, entry);

	return run_loop(vcpu, run);
}
