/*
 * guest-kit: boot-info normalisation (PVH start_info or Linux boot_params),
 * command line parsing, the standard report lines and test dispatch.
 */
#include "kit.h"

enum { VIA_PVH, VIA_BZIMAGE, VIA_BZIMAGE32 };
static const char *const via_names[] = { "pvh", "bzimage", "bzimage32" };

struct boot_info boot;

/* Only the first 4 GiB are mapped (identity, see entry.S). */
#define MAPPED_LIMIT 0x100000000ULL

static int phys_ok(uint64_t addr, uint64_t len)
{
	return addr < MAPPED_LIMIT && len <= MAPPED_LIMIT - addr;
}

/* Unaligned little-endian loads from loader-provided structures. */
typedef uint16_t __attribute__((may_alias, aligned(1))) u16_un;
typedef uint32_t __attribute__((may_alias, aligned(1))) u32_un;
typedef uint64_t __attribute__((may_alias, aligned(1))) u64_un;
static inline uint8_t rd8(uint64_t a) { return *(const uint8_t *)(uintptr_t)a; }
static inline uint16_t rd16(uint64_t a) { return *(const u16_un *)(uintptr_t)a; }
static inline uint32_t rd32(uint64_t a) { return *(const u32_un *)(uintptr_t)a; }
static inline uint64_t rd64(uint64_t a) { return *(const u64_un *)(uintptr_t)a; }

static const char *copy_cmdline(uint64_t paddr)
{
	boot.cmdline[0] = '\0';
	if (!paddr)
		return NULL;
	if (!phys_ok(paddr, 1))
		return "cmdline-above-4g";
	const char *src = (const char *)(uintptr_t)paddr;
	size_t i;
	for (i = 0; i < CMDLINE_MAX - 1 && src[i] && phys_ok(paddr + i, 1); i++)
		boot.cmdline[i] = src[i];
	boot.cmdline[i] = '\0';
	return NULL;
}

static void add_mem(uint64_t base, uint64_t size, uint32_t type)
{
	if (boot.nmem < MAX_MEM)
		boot.mem[boot.nmem++] = (struct mem_range){ base, size, type };
}

static void add_module(uint64_t addr, uint64_t size)
{
	if (boot.nmod < MAX_MODULES)
		boot.mod[boot.nmod++] = (struct module){ addr, size };
}

/* ---- PVH: struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) ---- */
#define HVM_START_MAGIC 0x336ec578
#define SI_MAGIC         0x00	/* u32 */
#define SI_VERSION       0x04	/* u32 */
#define SI_NR_MODULES    0x0c	/* u32 */
#define SI_MODLIST       0x10	/* u64 */
#define SI_CMDLINE       0x18	/* u64 */
#define SI_MEMMAP        0x28	/* u64, version >= 1 */
#define SI_MEMMAP_NR     0x30	/* u32, version >= 1 */
#define MOD_ENTRY_SIZE   32	/* paddr, size, cmdline_paddr, reserved */
#define MEMMAP_ENTRY_SIZE 24	/* addr, size, type u32, reserved u32 */

static const char *parse_pvh(uint64_t si)
{
	if (!phys_ok(si, 0x38) || rd32(si + SI_MAGIC) != HVM_START_MAGIC)
		return "bad-pvh-start-info-magic";

	const char *err = copy_cmdline(rd64(si + SI_CMDLINE));
	if (err)
		return err;

	if (rd32(si + SI_VERSION) >= 1) {
		uint64_t mm = rd64(si + SI_MEMMAP);
		uint32_t n = rd32(si + SI_MEMMAP_NR);
		if (n && !phys_ok(mm, (uint64_t)n * MEMMAP_ENTRY_SIZE))
			return "memmap-above-4g";
		for (uint32_t i = 0; i < n; i++, mm += MEMMAP_ENTRY_SIZE)
			add_mem(rd64(mm), rd64(mm + 8), rd32(mm + 16));
	}

	uint64_t ml = rd64(si + SI_MODLIST);
	uint32_t n = rd32(si + SI_NR_MODULES);
	if (n && !phys_ok(ml, (uint64_t)n * MOD_ENTRY_SIZE))
		return "modlist-above-4g";
	for (uint32_t i = 0; i < n; i++, ml += MOD_ENTRY_SIZE)
		add_module(rd64(ml), rd64(ml + 8));
	return NULL;
}

/* ---- Linux boot_params, "zero page" (Documentation/arch/x86/zero-page.rst) ---- */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE  0x0c4
#define BP_EXT_CMD_LINE_PTR  0x0c8
#define BP_E820_ENTRIES      0x1e8	/* u8 */
#define BP_BOOT_FLAG         0x1fe	/* u16, 0xaa55 */
#define BP_HEADER            0x202	/* u32, "HdrS" */
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21c
#define BP_CMD_LINE_PTR      0x228
#define BP_E820_TABLE        0x2d0	/* 20-byte entries: addr, size, type */
#define BP_SIZE              0x1000
#define E820_ENTRY_SIZE      20
#define E820_MAX             128

static const char *parse_boot_params(uint64_t bp)
{
	if (!phys_ok(bp, BP_SIZE))
		return "boot-params-above-4g";
	if (rd16(bp + BP_BOOT_FLAG) != 0xaa55)
		return "bad-boot-flag";
	if (rd32(bp + BP_HEADER) != 0x53726448)	/* "HdrS" */
		return "bad-setup-header-magic";

	uint64_t cmd = rd32(bp + BP_CMD_LINE_PTR) |
		       (uint64_t)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32;
	const char *err = copy_cmdline(cmd);
	if (err)
		return err;

	unsigned n = rd8(bp + BP_E820_ENTRIES);
	if (n > E820_MAX)
		n = E820_MAX;
	for (unsigned i = 0; i < n; i++) {
		uint64_t e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;
		add_mem(rd64(e), rd64(e + 8), rd32(e + 16));
	}

	uint64_t rd = rd32(bp + BP_RAMDISK_IMAGE) |
		      (uint64_t)rd32(bp + BP_EXT_RAMDISK_IMAGE) << 32;
	uint64_t rs = rd32(bp + BP_RAMDISK_SIZE) |
		      (uint64_t)rd32(bp + BP_EXT_RAMDISK_SIZE) << 32;
	if (rs)
		add_module(rd, rs);
	return NULL;
}

/* ---- command line: space separated key=value words ---- */
#define MAX_ARGS 32
static char argbuf[CMDLINE_MAX];
static struct {
	const char *key, *val;
} args[MAX_ARGS];
static unsigned nargs;

static void parse_args(void)
{
	char *p = argbuf;

	memcpy(argbuf, boot.cmdline, sizeof(argbuf));
	while (*p && nargs < MAX_ARGS) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			*p++ = '\0';
		if (!*p)
			break;
		char *word = p, *eq = NULL;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n') {
			if (*p == '=' && !eq)
				eq = p;
			p++;
		}
		if (*p)
			*p++ = '\0';
		if (eq) {	/* bare words (no '=') are ignored */
			*eq = '\0';
			args[nargs].key = word;
			args[nargs].val = eq + 1;
			nargs++;
		}
	}
}

static const char *arg(const char *key)
{
	const char *v = NULL;
	for (unsigned i = 0; i < nargs; i++)	/* last one wins */
		if (!kstrcmp(args[i].key, key))
			v = args[i].val;
	return v;
}

const char *param_str(const char *key, const char *dflt)
{
	const char *v = arg(key);
	return v ? v : dflt;
}

uint64_t param(const char *key, uint64_t dflt)
{
	const char *v = arg(key);
	uint64_t n;
	return v && parse_u64(v, &n) ? n : dflt;
}

/* ---- exit ---- */
void guest_exit(uint32_t code)
{
	kprintf("guest-kit: exit code=%u\n", code);
	outl(PORT_EXIT, code);
	/* No exit device: park the CPU. */
	for (;;)
		__asm__ volatile("cli; hlt");
}

void kmain(uint64_t info, unsigned via);

void kmain(uint64_t info, unsigned via)
{
	serial_init();
	boot.via = via < 3 ? via_names[via] : "unknown";
	kprintf("guest-kit: hello via=%s\n", boot.via);

	idt_init();
	pic_disable();

	const char *err = via == VIA_PVH ? parse_pvh(info)
					 : parse_boot_params(info);
	if (err) {
		kprintf("guest-kit: FAIL test=boot reason=%s\n", err);
		guest_exit(EXIT_FAIL);
	}

	kprintf("guest-kit: cmdline=\"%s\"\n", boot.cmdline);
	for (unsigned i = 0; i < boot.nmem; i++)
		kprintf("guest-kit: mem base=0x%llx size=0x%llx type=%u\n",
			(unsigned long long)boot.mem[i].base,
			(unsigned long long)boot.mem[i].size, boot.mem[i].type);
	for (unsigned i = 0; i < boot.nmod; i++) {
		struct module *m = &boot.mod[i];
		if (!phys_ok(m->addr, m->size)) {
			kprintf("guest-kit: FAIL test=boot reason=module-above-4g\n");
			guest_exit(EXIT_FAIL);
		}
		kprintf("guest-kit: module index=%u addr=0x%llx size=0x%llx crc32=0x%08x\n",
			i, (unsigned long long)m->addr,
			(unsigned long long)m->size,
			crc32((const void *)(uintptr_t)m->addr, m->size));
	}

	parse_args();
	const char *name = arg("test");
	if (!name)
		name = "pci-scan";
	test_fn fn = find_test(name);
	if (!fn)
		fn = find_scsi_test(name);
	if (!fn)
		fn = find_mig_test(name);
	if (!fn)
		fn = find_mem_test(name);
	if (!fn)
		fn = find_hostile_test(name);
	if (!fn)
		fn = find_unclaimed_test(name);
	if (!fn) {
		kprintf("guest-kit: FAIL test=%s reason=unknown-test\n", name);
		guest_exit(EXIT_FAIL);
	}

	const char *reason = fn();
	if (reason) {
		kprintf("guest-kit: FAIL test=%s reason=%s\n", name, reason);
		guest_exit(EXIT_FAIL);
	}
	kprintf("guest-kit: PASS test=%s\n", name);
	guest_exit(EXIT_PASS);
}
