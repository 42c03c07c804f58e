/*
 * tsvmm-io: large O_DIRECT requests from physically scattered user pages, and
 * pattern files, for the tiny Linux guest.  Freestanding (raw x86-64 syscalls,
 * no libc) so it adds a few KiB to the initramfs; build.sh compiles it to
 * /bin/tsvmm-io.
 *
 *   tsvmm-io dio DEV OFFSET BYTES SEED
 *       Fills BYTES (a multiple of 4096, at most 4 MiB) of pattern into
 *       single pages picked so that no page is physically followed by the next
 *       one (checked with /proc/self/pagemap): one iovec per page, so the
 *       block layer needs one segment per page.  pwritev(O_DIRECT) at OFFSET
 *       of /dev/DEV, zero the pages, preadv(O_DIRECT) into them, compare.
 *       Prints, per direction:
 *         linux-guest: dio OP dev=DEV offset=O bytes=B iovecs=N segments=S requests=R sectors=K
 *       (segments: physically contiguous runs in the iovecs; requests and
 *       sectors: the delta of /sys/block/DEV/stat for that direction).
 *   tsvmm-io fill FILE BYTES SEED     write a pattern file (64 KiB write()s)
 *   tsvmm-io check FILE BYTES SEED    read it back and compare (size too)
 *
 * Pattern: the little-endian 32-bit word at byte offset o (of the disk, or of
 * the file) is ((o / 4 + 1) * 0x9E3779B1 mod 2^32) ^ SEED.  The host side
 * (apps/vmm/e2e-linux/linux.ts) computes the same.
 *
 * Exit status 0 when everything matched; 1 with a "linux-guest: note
 * tsvmm-io error ..." line otherwise.
 */
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_mmap 9
#define SYS_munmap 11
#define SYS_pread64 17
#define SYS_preadv 295
#define SYS_pwritev 296
#define SYS_exit_group 231

#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_DIRECT 040000
#define PROT_RW 3
#define MAP_PRIVATE_ANON 0x22

#define PAGE 4096UL
#define MAX_PAGES 1024 /* 4 MiB; also UIO_MAXIOV */
#define POOL_PAGES (MAX_PAGES + MAX_PAGES / 2 + 8)

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
	i64 ret;
	register i64 r10 __asm__("r10") = d;
	register i64 r8 __asm__("r8") = e;
	register i64 r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#define sys3(n, a, b, c) sys6(n, (i64)(a), (i64)(b), (i64)(c), 0, 0, 0)

__asm__(".globl _start\n"
	"_start:\n"
	"  xor %rbp, %rbp\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call cmain\n"
	"  mov %eax, %edi\n"
	"  mov $231, %eax\n"
	"  syscall\n"
	"  hlt\n");

void *memset(void *d, int c, u64 n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

/* ------------------------------------------------------------- output --- */
static char obuf[512];
static u64 olen;

static void out_s(const char *s)
{
	while (*s && olen < sizeof(obuf) - 1)
		obuf[olen++] = *s++;
}

static void out_u(u64 v)
{
	char t[24];
	int i = 0;
	do
		t[i++] = (char)('0' + v % 10);
	while ((v /= 10) && i < 24);
	while (i && olen < sizeof(obuf) - 1)
		obuf[olen++] = t[--i];
}

static void out_flush(void)
{
	obuf[olen++] = '\n';
	sys3(SYS_write, 1, obuf, olen);
	olen = 0;
}

static int error(const char *what, const char *arg, i64 v)
{
	out_s("linux-guest: note tsvmm-io error ");
	out_s(what);
	out_s(" ");
	out_s(arg);
	out_s(" value=");
	if (v < 0) {
		out_s("-");
		v = -v;
	}
	out_u((u64)v);
	out_flush();
	return 1;
}

static int parse_u(const char *s, u64 *v)
{
	u64 r = 0;
	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		r = r * 10 + (u64)(*s - '0');
	}
	*v = r;
	return 0;
}

static int streq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static u32 pattern_word(u64 off, u32 seed)
{
	return (u32)((off / 4 + 1) * 0x9E3779B1UL) ^ seed;
}

static void fill(u32 *w, u64 off, u64 bytes, u32 seed)
{
	for (u64 i = 0; i < bytes / 4; i++)
		w[i] = pattern_word(off + i * 4, seed);
}

/* Returns the byte offset (relative to off) of the first mismatch, or bytes. */
static u64 compare(const u32 *w, u64 off, u64 bytes, u32 seed)
{
	for (u64 i = 0; i < bytes / 4; i++)
		if (w[i] != pattern_word(off + i * 4, seed))
			return i * 4;
	return bytes;
}

/* ------------------------------------------------------ scattered pages --- */
struct iovec {
	void *base;
	u64 len;
};

static u64 rng = 0x2545F4914F6CDD1DUL;
static u64 rnd(u64 n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % n;
}

static u64 pagemap[POOL_PAGES];
static u32 order[POOL_PAGES];

/*
 * Maps a pool of 1.5 x `pages` pages, faults them in a shuffled order (so the
 * page allocator's physical order is scrambled against the virtual one),
 * then picks `pages` of them for `iov` such that no page's frame is the
 * frame after the previous page's: every iovec is its own segment.
 * Returns 0, or an error.  *segments = physically contiguous runs.
 */
static int scatter(int pmfd, struct iovec *iov, u64 pages, u64 *segments)
{
	u32 np = (u32)(pages + pages / 2 + 8);
	char *pool = (char *)sys6(SYS_mmap, 0, np * PAGE, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
	if ((i64)pool < 0 && (i64)pool > -4096)
		return error("mmap", "pool", (i64)pool);
	for (u32 i = 0; i < np; i++)
		order[i] = i;
	for (u32 i = np - 1; i > 0; i--) {
		u32 j = (u32)rnd(i + 1), t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (u32 i = 0; i < np; i++)
		pool[(u64)order[i] * PAGE] = 1;
	i64 r = sys6(SYS_pread64, pmfd, (i64)pagemap, np * 8, (i64)((u64)pool / PAGE * 8), 0, 0);
	if (r != (i64)np * 8)
		return error("pread", "/proc/self/pagemap", r);
	u64 pfn_mask = (1UL << 55) - 1, last = 0, n = 0;
	/* Virtual order: the frames follow the shuffled fault order, not this one. */
	for (u32 i = 0; i < np && n < pages; i++) {
		u64 e = pagemap[i];
		u64 pfn = e & pfn_mask;
		if (!(e >> 63) || !pfn)
			return error("pagemap", "no frame number (needs CAP_SYS_ADMIN)", (i64)i);
		if (n && pfn == last + 1)
			continue; /* would merge with the previous iovec */
		iov[n].base = pool + (u64)i * PAGE;
		iov[n].len = PAGE;
		last = pfn;
		n++;
	}
	if (n < pages)
		return error("scatter", "not enough scattered pages", (i64)n);
	/* Count what the block layer can merge: consecutive frames. */
	u64 runs = 0;
	last = 0;
	for (u64 i = 0; i < n; i++) {
		u64 pfn = pagemap[((u64)iov[i].base - (u64)pool) / PAGE] & pfn_mask;
		if (i == 0 || pfn != last + 1)
			runs++;
		last = pfn;
	}
	*segments = runs;
	return 0;
}

/* ------------------------------------------------------------ diskstat --- */
/* /sys/block/DEV/stat: read ios, merges, sectors, ticks, write ios, merges, sectors, ... */
static int diskstat(const char *dev, u64 st[8])
{
	char path[96], buf[256];
	u64 l = 0;
	const char *a = "/sys/block/";
	while (*a)
		path[l++] = *a++;
	for (const char *d = dev; *d && l < 80; d++)
		path[l++] = *d;
	a = "/stat";
	while (*a)
		path[l++] = *a++;
	path[l] = 0;
	int fd = (int)sys3(SYS_open, path, O_RDONLY, 0);
	if (fd < 0)
		return error("open", path, fd);
	i64 n = sys3(SYS_read, fd, buf, sizeof(buf) - 1);
	sys3(SYS_close, fd, 0, 0);
	if (n <= 0)
		return error("read", path, n);
	buf[n] = 0;
	char *p = buf;
	for (int i = 0; i < 8; i++) {
		while (*p == ' ')
			p++;
		u64 v = 0;
		if (*p < '0' || *p > '9')
			return error("parse", path, i);
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (u64)(*p++ - '0');
		st[i] = v;
	}
	return 0;
}

static struct iovec iov[MAX_PAGES];

static void report(const char *op, const char *dev, u64 off, u64 bytes, u64 segs, const u64 a[8], const u64 b[8], int base)
{
	out_s("linux-guest: dio ");
	out_s(op);
	out_s(" dev=");
	out_s(dev);
	out_s(" offset=");
	out_u(off);
	out_s(" bytes=");
	out_u(bytes);
	out_s(" iovecs=");
	out_u(bytes / PAGE);
	out_s(" segments=");
	out_u(segs);
	out_s(" requests=");
	out_u(b[base] - a[base]);
	out_s(" sectors=");
	out_u(b[base + 2] - a[base + 2]);
	out_flush();
}

static int cmd_dio(const char *dev, u64 off, u64 bytes, u32 seed)
{
	if (!bytes || bytes % PAGE || bytes > MAX_PAGES * PAGE || off % PAGE)
		return error("dio", "bytes must be 4 KiB..4 MiB in pages, offset page aligned", (i64)bytes);
	u64 pages = bytes / PAGE, segs = 0, s0[8], s1[8], s2[8];
	int pm = (int)sys3(SYS_open, "/proc/self/pagemap", O_RDONLY, 0);
	if (pm < 0)
		return error("open", "/proc/self/pagemap", pm);
	if (scatter(pm, iov, pages, &segs))
		return 1;
	sys3(SYS_close, pm, 0, 0);
	for (u64 i = 0; i < pages; i++)
		fill(iov[i].base, off + i * PAGE, PAGE, seed);
	char path[64];
	u64 l = 0;
	for (const char *a = "/dev/"; *a; a++)
		path[l++] = *a;
	for (const char *d = dev; *d && l < 60; d++)
		path[l++] = *d;
	path[l] = 0;
	int fd = (int)sys3(SYS_open, path, O_RDWR | O_DIRECT, 0);
	if (fd < 0)
		return error("open O_DIRECT", path, fd);
	if (diskstat(dev, s0))
		return 1;
	i64 r = sys6(SYS_pwritev, fd, (i64)iov, (i64)pages, (i64)off, 0, 0);
	if (r != (i64)bytes)
		return error("pwritev", path, r);
	if (diskstat(dev, s1))
		return 1;
	for (u64 i = 0; i < pages; i++)
		memset(iov[i].base, 0, PAGE);
	r = sys6(SYS_preadv, fd, (i64)iov, (i64)pages, (i64)off, 0, 0);
	if (r != (i64)bytes)
		return error("preadv", path, r);
	if (diskstat(dev, s2))
		return 1;
	sys3(SYS_close, fd, 0, 0);
	report("write", dev, off, bytes, segs, s0, s1, 4);
	report("read", dev, off, bytes, segs, s1, s2, 0);
	for (u64 i = 0; i < pages; i++) {
		u64 m = compare(iov[i].base, off + i * PAGE, PAGE, seed);
		if (m != PAGE)
			return error("read back differs at disk offset", path, (i64)(off + i * PAGE + m));
	}
	return 0;
}

static u32 fbuf[65536 / 4];

static int cmd_file(int check, const char *file, u64 bytes, u32 seed)
{
	int fd = (int)sys3(SYS_open, file, check ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return error("open", file, fd);
	for (u64 off = 0; off < bytes; off += sizeof(fbuf)) {
		u64 n = bytes - off < sizeof(fbuf) ? bytes - off : sizeof(fbuf);
		if (check) {
			u64 got = 0;
			while (got < n) {
				i64 r = sys3(SYS_read, fd, (char *)fbuf + got, n - got);
				if (r <= 0)
					return error("short read", file, (i64)(off + got));
				got += (u64)r;
			}
			/* A tail that is not a whole word is checked bytewise below. */
			u64 m = compare(fbuf, off, n & ~3UL, seed);
			if (m != (n & ~3UL))
				return error("differs at offset", file, (i64)(off + m));
			if (n & 3) {
				u32 w = pattern_word(off + (n & ~3UL), seed);
				const unsigned char *p = (const unsigned char *)fbuf + (n & ~3UL);
				for (u64 k = 0; k < (n & 3); k++)
					if (p[k] != ((w >> (8 * k)) & 0xff))
						return error("differs at offset", file, (i64)(off + (n & ~3UL) + k));
			}
		} else {
			fill(fbuf, off, (n + 3) & ~3UL, seed);
			i64 r = sys3(SYS_write, fd, fbuf, n);
			if (r != (i64)n)
				return error("write", file, r);
		}
	}
	if (check) {
		char c;
		i64 r = sys3(SYS_read, fd, &c, 1);
		if (r != 0)
			return error("longer than expected", file, (i64)bytes);
	}
	i64 r = sys3(SYS_close, fd, 0, 0);
	if (r < 0)
		return error("close", file, r);
	return 0;
}

int cmain(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	u64 a, b, c;
	if (argc == 6 && streq(argv[1], "dio") && !parse_u(argv[3], &a) && !parse_u(argv[4], &b) && !parse_u(argv[5], &c))
		return cmd_dio(argv[2], a, b, (u32)c);
	if (argc == 5 && (streq(argv[1], "fill") || streq(argv[1], "check")) && !parse_u(argv[3], &b) && !parse_u(argv[4], &c))
		return cmd_file(streq(argv[1], "check"), argv[2], b, (u32)c);
	return error("usage", "dio DEV OFFSET BYTES SEED | fill FILE BYTES SEED | check FILE BYTES SEED", argc);
}
