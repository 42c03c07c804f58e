/*
 * guest-kit: virtio-scsi tests (test=scsi-*) on top of vscsi.c.
 *
 * Data pattern (the same as the blk-* tests, so the host can check its image
 * file): the byte at image offset o is
 *     ((o / 512) * 31 + (o % 512) * 7 + seed) & 0xff
 * i.e. byte i of 512-byte sector s is (s * 31 + i * 7 + seed) & 0xff, for any
 * logical block size.
 *
 * Expected values come from SPC-4 / SBC-3 / SAM-5. Where QEMU's scsi-hd
 * answers differently the test accepts QEMU's answer unless strict=1, and
 * prints a `scsi-deviation` line either way.
 */
#include "scsi.h"

#define IOBUF_SIZE (128 * 1024)
#define HALF_SIZE  (IOBUF_SIZE / 2)

/* wbuf = first half, rbuf = second half; scsi-bench uses all of it. */
static uint8_t iobuf[IOBUF_SIZE] __attribute__((aligned(4096)));
#define wbuf (iobuf)
#define rbuf (iobuf + HALF_SIZE)
static uint8_t small[4096] __attribute__((aligned(64)));
static uint8_t user_stack[16384] __attribute__((aligned(16)));

/* A logical unit as READ CAPACITY(16) describes it. */
struct lu {
	unsigned lun;
	uint64_t blocks;
	uint32_t bs;
	int lbpme, lbprz;
};

static unsigned umin(unsigned a, unsigned b)
{
	return a < b ? a : b;
}

static int strict(void)
{
	return param("strict", 0) != 0;
}

/* ---- pattern ---- */
static void fill_pattern(uint8_t *buf, uint64_t lba, unsigned blocks, uint32_t bs,
			 unsigned seed)
{
	uint64_t sec = lba * (bs / 512);
	unsigned nsec = blocks * (bs / 512);
	for (unsigned s = 0; s < nsec; s++) {
		uint8_t v = (uint8_t)((sec + s) * 31 + seed);
		uint8_t *p = buf + s * 512;
		for (unsigned i = 0; i < 512; i++, v += 7)
			p[i] = v;
	}
}

/* Prints "<tag> mismatch ..." at the first difference; 0 if all match. */
static int compare(const char *tag, const char *op, const uint8_t *got,
		   const uint8_t *want, uint64_t lba, unsigned blocks, uint32_t bs)
{
	uint32_t len = blocks * bs;
	if (!memcmp(got, want, len))
		return 0;
	for (uint32_t i = 0; i < len; i++) {
		if (got[i] != want[i]) {
			kprintf("%s mismatch op=%s lba=%llu offset=%u got=0x%02x want=0x%02x\n",
				tag, op, (unsigned long long)(lba + i / bs), i % bs,
				got[i], want[i]);
			break;
		}
	}
	return 1;
}

/* ---- command helpers ---- */
/* Splits buf into descriptors of `seg` bytes (the last may be shorter). */
static unsigned split(struct vbuf *v, unsigned max, uint8_t *buf, uint32_t len,
		      uint32_t seg, int write)
{
	unsigned n = 0;
	if (!seg)
		seg = len;
	for (uint32_t off = 0; off < len && n < max; off += seg) {
		uint32_t l = len - off < seg ? len - off : seg;
		v[n++] = (struct vbuf){ (uintptr_t)(buf + off), l, write };
	}
	return n;
}

/* Segment size so that len needs at most the device's seg_max (and our
 * SCSI_MAX_BUFS) descriptors. */
static uint32_t seg_for(uint32_t len, uint32_t want)
{
	unsigned maxn = SCSI_MAX_BUFS;
	if (vscsi.seg_max && vscsi.seg_max < maxn)
		maxn = vscsi.seg_max;
	if (vscsi_reqq(&vscsi, 0)->size - 2 < maxn)	/* + request + response */
		maxn = vscsi_reqq(&vscsi, 0)->size - 2;
	if (!want || want > len)
		want = len;
	if ((len + want - 1) / want > maxn)
		want = (len + maxn - 1) / maxn;
	return want;
}

/* One command, data-in (dir 1) / data-out (dir 0) / none (len 0). ua: retry
 * once on UNIT ATTENTION (printing scsi-ua). */
static const char *cmd(unsigned lun, const uint8_t *cdb, unsigned cdb_len, void *buf,
		       uint32_t len, int dev_writes, uint32_t seg, int ua,
		       struct scsi_res *res)
{
	struct vbuf v[SCSI_MAX_BUFS];
	struct scsi_cmd c = { .lun = lun, .cdb = cdb, .cdb_len = cdb_len, .bufs = v };
	if (len)
		c.nbufs = split(v, SCSI_MAX_BUFS, buf, len, seg_for(len, seg), dev_writes);
	return ua ? scsi_exec_ua(&vscsi, &c, res) : scsi_exec(&vscsi, &c, res);
}

static void print_result(const char *what, unsigned lun, const struct scsi_res *r)
{
	kprintf("scsi: command %s lun=%u response=%u status=0x%02x key=0x%02x asc=0x%02x ascq=0x%02x\n",
		what, lun, r->response, r->status, r->key, r->asc, r->ascq);
}

/* NULL if the command completed with response OK and status GOOD. */
static const char *expect_good(const char *what, unsigned lun, const struct scsi_res *r)
{
	if (r->response == VIRTIO_SCSI_S_OK && r->status == SAM_STAT_GOOD)
		return NULL;
	print_result(what, lun, r);
	if (r->response == 0xff)
		return "response-not-written";
	if (r->response != VIRTIO_SCSI_S_OK)
		return "bad-response";
	return "check-condition";
}

static int sense_is(const struct scsi_res *r, uint8_t key, uint8_t asc, uint8_t ascq)
{
	return r->response == VIRTIO_SCSI_S_OK && r->status == SAM_STAT_CHECK_CONDITION &&
	       r->key == key && r->asc == asc && r->ascq == ascq;
}

static void print_sense(const char *name, const struct scsi_res *r)
{
	kprintf("scsi-sense case=%s key=0x%02x asc=0x%02x ascq=0x%02x\n", name,
		r->key, r->asc, r->ascq);
}

static void print_deviation(const char *name, const struct scsi_res *r)
{
	kprintf("scsi-deviation case=%s status=0x%02x key=0x%02x asc=0x%02x ascq=0x%02x strict=%u\n",
		name, r->status, r->key, r->asc, r->ascq, strict());
}

static const char *tur(unsigned lun, int ua, struct scsi_res *res)
{
	uint8_t cdb[6] = { OP_TEST_UNIT_READY };
	return cmd(lun, cdb, 6, NULL, 0, 0, 0, ua, res);
}

/* TEST UNIT READY until GOOD (at most 4 tries), printing unit attentions. */
static const char *settle(unsigned lun)
{
	struct scsi_res res;
	const char *r;
	for (int i = 0; i < 4; i++) {
		if ((r = tur(lun, 0, &res)))
			return r;
		if (res.response == VIRTIO_SCSI_S_OK && res.status == SAM_STAT_GOOD)
			return NULL;
		if (res.response == VIRTIO_SCSI_S_OK && res.status == SAM_STAT_CHECK_CONDITION &&
		    res.key == SENSE_UNIT_ATTENTION) {
			kprintf("scsi-ua lun=%u asc=0x%02x ascq=0x%02x\n", lun, res.asc, res.ascq);
			continue;
		}
		return expect_good("test-unit-ready", lun, &res);
	}
	return "unit-attention-persists";
}

static const char *inquiry(unsigned lun, int evpd, uint8_t page, uint8_t *buf,
			   uint16_t alloc, struct scsi_res *res)
{
	uint8_t cdb[6] = { OP_INQUIRY, (uint8_t)(evpd ? 1 : 0), page, 0, 0, 0 };
	put_be16(cdb + 3, alloc);
	memset(buf, 0, alloc);
	return cmd(lun, cdb, 6, buf, alloc, 1, 0, 1, res);
}

static const char *read_capacity(struct lu *u, int print)
{
	struct scsi_res res;
	const char *r;
	uint8_t cdb10[10] = { OP_READ_CAPACITY_10 };
	memset(small, 0, 8);
	if ((r = cmd(u->lun, cdb10, 10, small, 8, 1, 0, 1, &res)) ||
	    (r = expect_good("read-capacity-10", u->lun, &res)))
		return r;
	uint32_t last10 = get_be32(small), bs10 = get_be32(small + 4);

	uint8_t cdb16[16] = { OP_SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16 };
	put_be32(cdb16 + 10, 32);
	memset(small, 0, 32);
	if ((r = cmd(u->lun, cdb16, 16, small, 32, 1, 0, 1, &res)) ||
	    (r = expect_good("read-capacity-16", u->lun, &res)))
		return r;
	u->blocks = get_be64(small) + 1;
	u->bs = get_be32(small + 8);
	u->lbpme = (small[14] >> 7) & 1;
	u->lbprz = (small[14] >> 6) & 1;
	if (print) {
		kprintf("scsi-capacity lun=%u blocks=%llu block_size=%u\n", u->lun,
			(unsigned long long)u->blocks, u->bs);
		kprintf("scsi-capacity10 lun=%u last_lba=%u block_size=%u\n", u->lun,
			last10, bs10);
		kprintf("scsi-lbp lun=%u lbpme=%u lbprz=%u\n", u->lun, u->lbpme, u->lbprz);
	}
	if (bs10 != u->bs ||
	    (u->blocks <= 0xffffffffull && last10 != u->blocks - 1) ||
	    (u->blocks > 0xffffffffull && last10 != 0xffffffffu))
		return "capacity-mismatch";
	if (u->bs < 512 || u->bs > 4096 || u->bs % 512)
		return "unsupported-block-size";
	return NULL;
}

/* READ/WRITE with the CDB of the given size (6, 10, 12, 16). */
static void rw_cdb(uint8_t *cdb, unsigned size, int write, uint64_t lba, uint32_t blocks)
{
	memset(cdb, 0, 16);
	switch (size) {
	case 6:
		cdb[0] = write ? OP_WRITE_6 : OP_READ_6;
		cdb[1] = (lba >> 16) & 0x1f;
		cdb[2] = lba >> 8;
		cdb[3] = lba;
		cdb[4] = blocks == 256 ? 0 : blocks;
		break;
	case 10:
		cdb[0] = write ? OP_WRITE_10 : OP_READ_10;
		put_be32(cdb + 2, (uint32_t)lba);
		put_be16(cdb + 7, blocks);
		break;
	case 12:
		cdb[0] = write ? OP_WRITE_12 : OP_READ_12;
		put_be32(cdb + 2, (uint32_t)lba);
		put_be32(cdb + 6, blocks);
		break;
	default:
		cdb[0] = write ? OP_WRITE_16 : OP_READ_16;
		put_be64(cdb + 2, lba);
		put_be32(cdb + 10, blocks);
		break;
	}
}

static const char *rw(const struct lu *u, unsigned size, int write, uint64_t lba,
		      uint32_t blocks, uint8_t *buf, uint32_t seg, const char *name)
{
	uint8_t cdb[16];
	struct scsi_res res;
	const char *r;
	rw_cdb(cdb, size, write, lba, blocks);
	if ((r = cmd(u->lun, cdb, size, buf, blocks * u->bs, !write, seg, 1, &res)) ||
	    (r = expect_good(name, u->lun, &res)))
		return r;
	if (res.resid) {
		kprintf("scsi: command %s lun=%u resid=%u\n", name, u->lun, res.resid);
		return "residual";
	}
	return NULL;
}

static int in_list(const uint8_t *list, unsigned n, uint8_t v)
{
	for (unsigned i = 0; i < n; i++)
		if (list[i] == v)
			return 1;
	return 0;
}

/* Printable copy of a fixed-width INQUIRY string, trailing spaces dropped. */
static void strfield(char *out, const uint8_t *in, unsigned n)
{
	unsigned len = 0;
	for (unsigned i = 0; i < n; i++) {
		uint8_t c = in[i];
		out[i] = c >= 0x20 && c < 0x7f && c != '\'' ? c : '?';
		if (c != ' ')
			len = i + 1;
	}
	out[len] = '\0';
}

/* ---- scsi-scan ---- */
static unsigned lun_from_report(const uint8_t *e)
{
	unsigned method = e[0] >> 6;
	if (method == 1)		/* flat space */
		return (e[0] & 0x3f) << 8 | e[1];
	return e[1];			/* peripheral (bus 0) */
}

#define MAX_LUNS 16

static const char *report_luns(unsigned lun, unsigned *luns, unsigned *nluns, int print)
{
	struct scsi_res res;
	const char *r;
	uint8_t cdb[12] = { OP_REPORT_LUNS };
	const uint32_t alloc = 16 + 8 * 256;
	put_be32(cdb + 6, alloc);
	memset(small, 0, alloc);
	if ((r = cmd(lun, cdb, 12, small, alloc, 1, 0, 1, &res)) ||
	    (r = expect_good("report-luns", lun, &res)))
		return r;
	uint32_t n = get_be32(small) / 8;
	*nluns = 0;
	for (uint32_t i = 0; i < n && i < 256; i++) {
		unsigned l = lun_from_report(small + 8 + 8 * i);
		if (print)
			kprintf("scsi-lun lun=%u\n", l);
		if (*nluns < MAX_LUNS)
			luns[(*nluns)++] = l;
	}
	return NULL;
}

static const char *scan_lun(unsigned lun)
{
	struct scsi_res res;
	const char *r;
	char vendor[9], product[17], rev[5];

	/* standard INQUIRY */
	if ((r = inquiry(lun, 0, 0, small, 96, &res)) ||
	    (r = expect_good("inquiry", lun, &res)))
		return r;
	strfield(vendor, small + 8, 8);
	strfield(product, small + 16, 16);
	strfield(rev, small + 32, 4);
	kprintf("scsi-inquiry lun=%u type=%u vendor='%s' product='%s' rev='%s' qualifier=%u version=0x%02x\n",
		lun, small[0] & 0x1f, vendor, product, rev, small[0] >> 5, small[2]);
	if (small[0] >> 5)
		return "lun-not-connected";

	/* VPD 0x00: supported pages */
	uint8_t pages[64];
	unsigned npages;
	if ((r = inquiry(lun, 1, 0x00, small, 255, &res)) ||
	    (r = expect_good("inquiry-vpd-00", lun, &res)))
		return r;
	npages = umin(small[3], sizeof(pages));
	memcpy(pages, small + 4, npages);
	kprintf("scsi-vpd lun=%u page=0x00 pages=", lun);
	for (unsigned i = 0; i < npages; i++)
		kprintf("%s%02x", i ? "," : "", pages[i]);
	kprintf("\n");
	if (!in_list(pages, npages, 0x00))
		return "vpd-00-not-listed";

	static const uint8_t want[] = { 0x80, 0x83, 0xb0, 0xb2 };
	for (unsigned k = 0; k < sizeof(want); k++) {
		uint8_t pg = want[k];
		if (!in_list(pages, npages, pg)) {
			kprintf("scsi-vpd lun=%u page=0x%02x supported=0\n", lun, pg);
			continue;
		}
		if ((r = inquiry(lun, 1, pg, small, 255, &res)))
			return r;
		if (res.response != VIRTIO_SCSI_S_OK || res.status != SAM_STAT_GOOD) {
			print_result("inquiry-vpd", lun, &res);
			return "vpd-page-failed";
		}
		if (small[1] != pg)
			return "vpd-page-code-mismatch";
		unsigned len = get_be16(small + 2);
		if (len > 251)
			len = 251;
		const uint8_t *p = small + 4;
		if (pg == 0x80) {
			char serial[252];
			strfield(serial, p, len);
			kprintf("scsi-vpd lun=%u page=0x80 serial='%s'\n", lun, serial);
		} else if (pg == 0x83) {
			unsigned nd = 0, off = 0;
			char types[64];
			unsigned tl = 0;
			while (off + 4 <= len && nd < 16) {
				unsigned dl = p[off + 3];
				unsigned type = p[off + 1] & 0xf;
				if (tl + 4 < sizeof(types)) {
					if (tl)
						types[tl++] = ',';
					if (type >= 10)
						types[tl++] = '1';
					types[tl++] = '0' + type % 10;
				}
				nd++;
				off += 4 + dl;
			}
			types[tl] = '\0';
			kprintf("scsi-vpd lun=%u page=0x83 designators=%u types=%s\n", lun, nd,
				tl ? types : "none");
		} else if (pg == 0xb0) {
			/* SBC-3 block limits (offsets from the page start) */
			const uint8_t *b = small;
			unsigned total = len + 4;
			kprintf("scsi-vpd lun=%u page=0xb0 max_xfer=%u opt_xfer=%u max_unmap_lba=%u max_unmap_desc=%u unmap_gran=%u max_ws=%llu\n",
				lun, total >= 12 ? get_be32(b + 8) : 0,
				total >= 16 ? get_be32(b + 12) : 0,
				total >= 24 ? get_be32(b + 20) : 0,
				total >= 28 ? get_be32(b + 24) : 0,
				total >= 32 ? get_be32(b + 28) : 0,
				total >= 44 ? (unsigned long long)get_be64(b + 36) : 0ull);
		} else if (pg == 0xb2) {
			const uint8_t *b = small;
			kprintf("scsi-vpd lun=%u page=0xb2 lbpu=%u lbpws=%u lbpws10=%u lbprz=%u prov_type=%u\n",
				lun, b[5] >> 7, (b[5] >> 6) & 1, (b[5] >> 5) & 1,
				(b[5] >> 2) & 1, b[6] & 7);
		}
	}

	/* READ CAPACITY (10) and (16): the first commands a UA hits */
	struct lu u = { .lun = lun };
	if ((r = read_capacity(&u, 1)))
		return r;

	if ((r = tur(lun, 1, &res)))
		return r;
	kprintf("scsi-tur lun=%u status=0x%02x\n", lun, res.status);
	return expect_good("test-unit-ready", lun, &res);
}

static const char *test_scsi_scan(void)
{
	const char *r = vscsi_open();
	if (r)
		return r;
	unsigned luns[MAX_LUNS], n;
	if ((r = report_luns(0, luns, &n, 1)))
		return r;
	if (!n)
		return "no-luns";
	for (unsigned i = 0; i < n; i++)
		if ((r = scan_lun(luns[i])))
			return r;

	/* a LUN that is not there: peripheral qualifier 3 */
	unsigned absent = param("absent-lun", 5);
	for (unsigned i = 0; i < n; i++)
		if (luns[i] == absent)
			return "absent-lun-present";
	struct scsi_res res;
	if ((r = inquiry(absent, 0, 0, small, 96, &res)) ||
	    (r = expect_good("inquiry-absent", absent, &res)))
		return r;
	unsigned qual = small[0] >> 5, type = small[0] & 0x1f;
	kprintf("scsi-absent lun=%u qualifier=%u type=0x%02x\n", absent, qual, type);
	if (qual != 3)
		return "absent-lun-qualifier";

	/* every request queue answers */
	for (unsigned q = 0; q < vscsi.nreq; q++) {
		uint8_t cdb[6] = { OP_TEST_UNIT_READY };
		struct scsi_cmd c = { .lun = luns[0], .cdb = cdb, .cdb_len = 6 };
		if ((r = scsi_exec_q(&vscsi, q, &c, &res)))
			return r;
		kprintf("scsi-queue index=%u status=0x%02x\n", 2 + q, res.status);
		if ((r = expect_good("test-unit-ready", luns[0], &res)))
			return r;
	}
	vscsi_events(&vscsi);
	return NULL;
}

/* ---- scsi-rw ---- */
static const char *open_lun(struct lu *u, int print)
{
	const char *r = vscsi_open();
	if (r)
		return r;
	u->lun = param("lun", 0);
	if ((r = settle(u->lun)))
		return r;
	return read_capacity(u, print);
}

static const char *check_range(const struct lu *u, uint64_t lba, uint64_t blocks,
			       uint32_t bufsize)
{
	if (!blocks || blocks * u->bs > bufsize)
		return "bad-blocks";
	if (lba + blocks > u->blocks)
		return "beyond-capacity";
	return NULL;
}

static void print_op(const char *tag, const char *op, uint64_t lba, uint32_t blocks)
{
	kprintf("%s op=%s lba=%llu blocks=%u ok\n", tag, op, (unsigned long long)lba, blocks);
}

/* VERIFY(10) with BYTCHK=01b: the device compares data-out with the medium. */
static const char *verify10(const struct lu *u, uint64_t lba, uint32_t blocks,
			    uint8_t *buf, struct scsi_res *res)
{
	uint8_t cdb[10] = { OP_VERIFY_10, 0x02 };
	put_be32(cdb + 2, (uint32_t)lba);
	put_be16(cdb + 7, blocks);
	return cmd(u->lun, cdb, 10, buf, blocks * u->bs, 0, 0, 1, res);
}

static const char *test_scsi_rw(void)
{
	struct lu u;
	const char *r = open_lun(&u, 1);
	if (r)
		return r;
	const char *T = "scsi-rw";
	uint64_t lba = param("lba", 0), n = param("blocks", umin(48, HALF_SIZE / u.bs));
	unsigned seed = param("seed", 1);
	uint32_t wseg = param("wseg", 1536), rseg = param("rseg", 1000);
	if ((r = check_range(&u, lba, n, HALF_SIZE)))
		return r;
	if (n < 3)
		return "bad-blocks";
	uint32_t a = n / 3, c6 = n - 2 * a;
	uint64_t l6 = lba + 2 * a;
	if (l6 + c6 > 0x200000 || c6 > 256)
		return "write6-range";	/* WRITE(6): 21-bit LBA, at most 256 blocks */

	fill_pattern(wbuf, lba, n, u.bs, seed);
	if ((r = rw(&u, 10, 1, lba, a, wbuf, wseg, "write-10")))
		return r;
	print_op(T, "write10", lba, a);
	if ((r = rw(&u, 16, 1, lba + a, a, wbuf + a * u.bs, wseg, "write-16")))
		return r;
	print_op(T, "write16", lba + a, a);
	if ((r = rw(&u, 6, 1, l6, c6, wbuf + 2 * a * u.bs, wseg, "write-6")))
		return r;
	print_op(T, "write6", l6, c6);

	static const unsigned sizes[] = { 6, 10, 12, 16 };
	static const char *const names[] = { "read6", "read10", "read12", "read16" };
	unsigned verified = 0;
	for (unsigned k = 0; k < 4; k++) {
		if (sizes[k] == 6 && (lba + n > 0x200000 || n > 256)) {
			kprintf("%s op=read6 skipped=range\n", T);
			continue;
		}
		memset(rbuf, 0, n * u.bs);
		if ((r = rw(&u, sizes[k], 0, lba, n, rbuf, rseg, names[k])))
			return r;
		if (compare(T, names[k], rbuf, wbuf, lba, n, u.bs))
			return "verify-mismatch";
		print_op(T, names[k], lba, n);
		verified = n;
	}

	/* WRITE AND VERIFY(10), BYTCHK=0, the same pattern over the first blocks */
	uint32_t wv = umin(n, 8);
	struct scsi_res res;
	uint8_t cdb[16] = { OP_WRITE_VERIFY_10 };
	put_be32(cdb + 2, (uint32_t)lba);
	put_be16(cdb + 7, wv);
	if ((r = cmd(u.lun, cdb, 10, wbuf, wv * u.bs, 0, wseg, 1, &res)) ||
	    (r = expect_good("write-verify-10", u.lun, &res)))
		return r;
	memset(rbuf, 0, wv * u.bs);
	if ((r = rw(&u, 10, 0, lba, wv, rbuf, rseg, "read10")))
		return r;
	if (compare(T, "write-verify10", rbuf, wbuf, lba, wv, u.bs))
		return "verify-mismatch";
	print_op(T, "write-verify10", lba, wv);

	/* VERIFY(10) BYTCHK=1: matching data -> GOOD; one byte off -> MISCOMPARE */
	int deviation = 0;
	if ((r = verify10(&u, lba, wv, wbuf, &res)))
		return r;
	if (res.response == VIRTIO_SCSI_S_OK && res.status == SAM_STAT_GOOD) {
		print_op(T, "verify10", lba, wv);
	} else if (sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x24, 0x00)) {
		print_deviation("verify-bytchk-match", &res);
		deviation = 1;
	} else {
		print_result("verify-10", u.lun, &res);
		return "verify-match-failed";
	}
	memcpy(rbuf, wbuf, wv * u.bs);
	rbuf[(wv - 1) * u.bs + 100] ^= 0xff;	/* last block, byte 100 */
	if ((r = verify10(&u, lba, wv, rbuf, &res)))
		return r;
	print_sense("verify-miscompare", &res);
	if (!sense_is(&res, SENSE_MISCOMPARE, 0x1d, 0x00)) {
		if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x24, 0x00)) {
			print_result("verify-10", u.lun, &res);
			return "no-miscompare";
		}
		print_deviation("verify-bytchk-miscompare", &res);
		deviation = 1;
	}
	if (deviation && strict())
		return "verify-bytchk-unsupported";

	/* SYNCHRONIZE CACHE (10) and (16), whole medium */
	uint8_t sc10[10] = { OP_SYNC_CACHE_10 };
	if ((r = cmd(u.lun, sc10, 10, NULL, 0, 0, 0, 1, &res)) ||
	    (r = expect_good("synchronize-cache-10", u.lun, &res)))
		return r;
	print_op(T, "sync-cache10", 0, 0);
	uint8_t sc16[16] = { OP_SYNC_CACHE_16 };
	if ((r = cmd(u.lun, sc16, 16, NULL, 0, 0, 0, 1, &res)))
		return r;
	if (sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x20, 0x00)) {
		/* SBC makes it optional; QEMU 7.2 does not implement it */
		print_deviation("sync-cache16", &res);
		if (strict())
			return "sync-cache16-unsupported";
	} else {
		if ((r = expect_good("synchronize-cache-16", u.lun, &res)))
			return r;
		print_op(T, "sync-cache16", 0, 0);
	}

	kprintf("scsi-rw lun=%u written=%llu verified=%u\n", u.lun,
		(unsigned long long)n, verified);
	return NULL;
}

/* ---- scsi-unmap ---- */
static int all_zero(const uint8_t *p, uint32_t len)
{
	for (uint32_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

static const char *test_scsi_unmap(void)
{
	struct lu u;
	const char *r = open_lun(&u, 1);
	if (r)
		return r;
	const char *T = "scsi-unmap";
	uint64_t lba = param("lba", 1024), n = param("blocks", umin(24, HALF_SIZE / u.bs));
	unsigned seed = param("seed", 1);
	struct scsi_res res;
	if ((r = check_range(&u, lba, n, HALF_SIZE)))
		return r;
	if (n < 3)
		return "bad-blocks";
	uint32_t a = n / 3, c = n - 2 * a;
	uint64_t lb = lba + a, lc = lba + 2 * a;

	/* Thin-provisioning VPD (if the device lists it) */
	unsigned lbpu = 0, lbpws = 0, lbpws10 = 0;
	if ((r = inquiry(u.lun, 1, 0xb2, small, 64, &res)))
		return r;
	if (res.response == VIRTIO_SCSI_S_OK && res.status == SAM_STAT_GOOD) {
		lbpu = small[5] >> 7;
		lbpws = (small[5] >> 6) & 1;
		lbpws10 = (small[5] >> 5) & 1;
	}
	kprintf("%s lun=%u lbpme=%u lbprz=%u lbpu=%u lbpws=%u lbpws10=%u\n", T, u.lun,
		u.lbpme, u.lbprz, lbpu, lbpws, lbpws10);

	fill_pattern(wbuf, lba, n, u.bs, seed);
	if ((r = rw(&u, 10, 1, lba, n, wbuf, 0, "write-10")))
		return r;
	print_op(T, "write10", lba, n);

	/* UNMAP [lba, lba + a): one block descriptor */
	uint8_t *pl = small;
	memset(pl, 0, 24);
	put_be16(pl, 22);		/* UNMAP data length (n - 2) */
	put_be16(pl + 2, 16);		/* block descriptor data length */
	put_be64(pl + 8, lba);
	put_be32(pl + 16, a);
	uint8_t um[10] = { OP_UNMAP };
	put_be16(um + 7, 24);
	if ((r = cmd(u.lun, um, 10, pl, 24, 0, 0, 1, &res)) ||
	    (r = expect_good("unmap", u.lun, &res)))
		return r;
	memset(rbuf, 0xa5, a * u.bs);
	if ((r = rw(&u, 10, 0, lba, a, rbuf, 0, "read10")))
		return r;
	unsigned zeroed = all_zero(rbuf, a * u.bs);
	kprintf("%s op=unmap lba=%llu blocks=%u zeroed=%u lbprz=%u\n", T,
		(unsigned long long)lba, a, zeroed, u.lbprz);
	if (u.lbprz && !zeroed)
		return "unmap-not-zeroed";

	/* WRITE SAME(16) with UNMAP=1 and a zero block over [lb, lb + a) */
	memset(small, 0, u.bs);
	uint8_t ws16[16] = { OP_WRITE_SAME_16, 0x08 };
	put_be64(ws16 + 2, lb);
	put_be32(ws16 + 10, a);
	if ((r = cmd(u.lun, ws16, 16, small, u.bs, 0, 0, 1, &res)) ||
	    (r = expect_good("write-same-16", u.lun, &res)))
		return r;
	memset(rbuf, 0xa5, a * u.bs);
	if ((r = rw(&u, 16, 0, lb, a, rbuf, 0, "read16")))
		return r;
	unsigned z16 = all_zero(rbuf, a * u.bs);
	kprintf("%s op=write-same16 lba=%llu blocks=%u unmap=1 zeroed=%u\n", T,
		(unsigned long long)lb, a, z16);
	if (!z16)
		return "write-same16-not-zeroed";

	/* WRITE SAME(10) of the pattern block of LBA lc over [lc, lc + c) */
	fill_pattern(small, lc, 1, u.bs, seed);
	uint8_t ws10[10] = { OP_WRITE_SAME_10 };
	put_be32(ws10 + 2, (uint32_t)lc);
	put_be16(ws10 + 7, c);
	if ((r = cmd(u.lun, ws10, 10, small, u.bs, 0, 0, 1, &res)) ||
	    (r = expect_good("write-same-10", u.lun, &res)))
		return r;
	memset(rbuf, 0, c * u.bs);
	if ((r = rw(&u, 10, 0, lc, c, rbuf, 0, "read10")))
		return r;
	unsigned same = 1;
	for (uint32_t b = 0; b < c; b++)
		if (memcmp(rbuf + b * u.bs, small, u.bs))
			same = 0;
	kprintf("%s op=write-same10 lba=%llu blocks=%u replicated=%u\n", T,
		(unsigned long long)lc, c, same);
	if (!same)
		return "write-same10-mismatch";
	kprintf("%s lun=%u unmapped=%u zeroed=%u replicated=%u\n", T, u.lun, a,
		(zeroed ? a : 0) + a, c);
	return NULL;
}

/* ---- scsi-errors ---- */
struct mode_page {
	int ok;
	uint8_t page[64];
	unsigned len;		/* whole page incl. 2-byte header */
	struct scsi_res res;
};

/* MODE SENSE(6), DBD=1, current values of one page. */
static const char *mode_sense6(unsigned lun, uint8_t page, struct mode_page *m)
{
	uint8_t cdb[6] = { OP_MODE_SENSE_6, 0x08, page, 0, 0xff, 0 };
	memset(small, 0, 256);
	const char *r = cmd(lun, cdb, 6, small, 255, 1, 0, 1, &m->res);
	if (r)
		return r;
	m->ok = m->res.response == VIRTIO_SCSI_S_OK && m->res.status == SAM_STAT_GOOD;
	if (!m->ok)
		return NULL;
	unsigned total = small[0] + 1, bdl = small[3];
	const uint8_t *p = small + 4 + bdl;
	if (4 + bdl + 2 > total || (p[0] & 0x3f) != page)
		return "mode-page-missing";
	m->len = umin(p[1] + 2, sizeof(m->page));
	memcpy(m->page, p, m->len);
	return NULL;
}

/* MODE SELECT(10), PF=1, SP=0, no block descriptor, one page. */
static const char *mode_select10(unsigned lun, const uint8_t *page, unsigned len,
				 struct scsi_res *res)
{
	uint8_t *pl = small;
	memset(pl, 0, 8);
	memcpy(pl + 8, page, len);
	pl[8] &= 0x3f;			/* PS is reserved in MODE SELECT */
	uint8_t cdb[10] = { OP_MODE_SELECT_10, 0x10 };
	put_be16(cdb + 7, 8 + len);
	return cmd(lun, cdb, 10, pl, 8 + len, 0, 0, 1, res);
}

static const char *test_scsi_errors(void)
{
	const char *r = vscsi_open();
	if (r)
		return r;
	unsigned lun = param("lun", 0), ro = param("ro-lun", 1);
	unsigned absent = param("absent-lun", 5), bad_op = param("bad-opcode", 0xc0);
	struct scsi_res res;
	struct lu u = { .lun = lun };
	int deviation = 0;

	if ((r = settle(lun)) || (r = settle(ro)))
		return r;
	if ((r = read_capacity(&u, 0)))
		return r;

	/* invalid opcode */
	uint8_t c[16];
	memset(c, 0, sizeof(c));
	c[0] = (uint8_t)bad_op;
	if ((r = cmd(lun, c, 16, NULL, 0, 0, 0, 1, &res)))
		return r;
	print_sense("invalid-opcode", &res);
	if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x20, 0x00))
		return "invalid-opcode-sense";

	/* invalid field in CDB: INQUIRY EVPD=1 with an unsupported page */
	if ((r = inquiry(lun, 1, 0xee, small, 255, &res)))
		return r;
	print_sense("invalid-field-in-cdb", &res);
	if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x24, 0x00))
		return "invalid-field-sense";

	/* LBA out of range: READ(16) at LBA = capacity */
	uint8_t cdb[16];
	rw_cdb(cdb, 16, 0, u.blocks, 1);
	if ((r = cmd(lun, cdb, 16, rbuf, u.bs, 1, 0, 1, &res)))
		return r;
	print_sense("lba-out-of-range", &res);
	if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x21, 0x00))
		return "lba-out-of-range-sense";

	/* write to a read-only LU */
	fill_pattern(wbuf, 0, 1, u.bs, 1);
	rw_cdb(cdb, 10, 1, 0, 1);
	if ((r = cmd(ro, cdb, 10, wbuf, u.bs, 0, 0, 1, &res)))
		return r;
	print_sense("write-protected", &res);
	if (!sense_is(&res, SENSE_DATA_PROTECT, 0x27, 0x00))
		return "write-protected-sense";

	/* LUN not supported: TEST UNIT READY to an absent LUN */
	if ((r = tur(absent, 0, &res)))
		return r;
	print_sense("lun-not-supported", &res);
	if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x25, 0x00))
		return "lun-not-supported-sense";

	/* REPORT LUNS on LUN 0 still works */
	unsigned luns[MAX_LUNS], nl;
	if ((r = report_luns(0, luns, &nl, 0)))
		return r;
	kprintf("scsi-errors report-luns ok luns=%u\n", nl);

	/* Mode pages: caching (WCE) and control (D_SENSE) */
	struct mode_page cache, ctl;
	if ((r = mode_sense6(lun, 0x08, &cache)))
		return r;
	if (!cache.ok) {
		print_result("mode-sense-6-caching", lun, &cache.res);
		return "mode-sense-caching-failed";
	}
	kprintf("scsi-mode page=0x08 wce=%u\n", (cache.page[2] >> 2) & 1);
	if ((r = mode_sense6(lun, 0x0a, &ctl)))
		return r;
	uint8_t pg[64];
	unsigned plen;
	if (ctl.ok) {
		kprintf("scsi-mode page=0x0a d_sense=%u\n", (ctl.page[2] >> 2) & 1);
		memcpy(pg, ctl.page, ctl.len);
		plen = ctl.len;
	} else {
		print_sense("mode-sense-control", &ctl.res);
		if (!sense_is(&ctl.res, SENSE_ILLEGAL_REQUEST, 0x24, 0x00))
			return "mode-sense-control-failed";
		print_deviation("mode-sense-control", &ctl.res);
		deviation = 1;
		/* SPC-4 control mode page with every field 0 */
		memset(pg, 0, sizeof(pg));
		pg[0] = 0x0a;
		pg[1] = 0x0a;
		plen = 12;
	}
	/* MODE SELECT(10): D_SENSE = 1 */
	pg[2] |= 0x04;
	if ((r = mode_select10(lun, pg, plen, &res)))
		return r;
	if (res.response != VIRTIO_SCSI_S_OK || res.status != SAM_STAT_GOOD) {
		print_sense("mode-select-d-sense", &res);
		if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x26, 0x00) &&
		    !sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x24, 0x00))
			return "mode-select-failed";
		print_deviation("mode-select-d-sense", &res);
		deviation = 1;
	} else {
		struct mode_page ctl2;
		if ((r = mode_sense6(lun, 0x0a, &ctl2)))
			return r;
		if (!ctl2.ok) {
			print_result("mode-sense-6-control", lun, &ctl2.res);
			return "mode-sense-control-failed";
		}
		kprintf("scsi-mode page=0x0a d_sense=%u\n", (ctl2.page[2] >> 2) & 1);
		/* the invalid opcode again: descriptor-format sense */
		if ((r = cmd(lun, c, 16, NULL, 0, 0, 0, 1, &res)))
			return r;
		print_sense("invalid-opcode-descriptor", &res);
		kprintf("scsi-sense-format case=invalid-opcode-descriptor code=0x%02x\n",
			res.sense_code);
		if (!sense_is(&res, SENSE_ILLEGAL_REQUEST, 0x20, 0x00))
			return "invalid-opcode-sense";
		if (res.sense_code != 0x72)
			return "not-descriptor-sense";
		if (!((ctl2.page[2] >> 2) & 1))
			return "d-sense-not-set";
		/* back to fixed format */
		pg[2] &= ~0x04;
		if ((r = mode_select10(lun, pg, plen, &res)) ||
		    (r = expect_good("mode-select-10", lun, &res)))
			return r;
		if ((r = cmd(lun, c, 16, NULL, 0, 0, 0, 1, &res)))
			return r;
		kprintf("scsi-sense-format case=invalid-opcode-fixed code=0x%02x\n",
			res.sense_code);
		if (res.sense_code != 0x70)
			return "not-fixed-sense";
	}
	if (deviation && strict())
		return "no-d-sense";

	/* the device is still usable */
	memset(rbuf, 0, u.bs);
	if ((r = rw(&u, 10, 0, 0, 1, rbuf, 0, "read10")))
		return r;
	kprintf("scsi-errors read ok lun=%u\n", lun);
	return NULL;
}

/* ---- scsi-tmf ---- */
static const char *tmf_name(uint32_t t)
{
	switch (t) {
	case VIRTIO_SCSI_T_TMF_ABORT_TASK: return "abort-task";
	case VIRTIO_SCSI_T_TMF_ABORT_TASK_SET: return "abort-task-set";
	case VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET: return "it-nexus-reset";
	case VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: return "lun-reset";
	default: return "other";
	}
}

static int tmf_ok(uint8_t resp)
{
	return resp == VIRTIO_SCSI_S_OK || resp == VIRTIO_SCSI_S_FUNCTION_SUCCEEDED;
}

/* A READ(10) of `blocks` in flight, then the abort TMF (for its tag with
 * ABORT TASK); waits for both. */
static const char *abort_inflight(const struct lu *u, uint32_t subtype, uint32_t blocks)
{
	struct vscsi *s = &vscsi;
	uint8_t cdb[16];
	struct vbuf v[SCSI_MAX_BUFS];
	rw_cdb(cdb, 10, 0, 0, blocks);
	struct scsi_cmd c = { .lun = u->lun, .cdb = cdb, .cdb_len = 10, .bufs = v };
	c.nbufs = split(v, SCSI_MAX_BUFS, rbuf, blocks * u->bs,
			seg_for(blocks * u->bs, 4096), 1);

	struct vq *rq = vscsi_reqq(s, 0), *cq = vscsi_ctrlq(s);
	int rd = scsi_submit(s, 0, &c);
	if (rd < 0)
		return "submit-failed";
	vq_kick(rq, 1);
	int tm = scsi_tmf_submit(s, subtype, u->lun, scsi_ctx(rd)->tag);
	if (tm < 0)
		return "submit-failed";
	vq_kick(cq, 1);
	const char *r;
	if ((r = scsi_wait(s, tm)))
		return r;
	uint8_t resp = scsi_ctx(tm)->resp.tmf.response;
	scsi_ctx_free(tm);
	if ((r = scsi_wait(s, rd)))
		return r;
	struct scsi_res res;
	scsi_result(rd, &res);
	const char *task = res.response == VIRTIO_SCSI_S_ABORTED ? "aborted" :
			   res.response == VIRTIO_SCSI_S_OK && res.status == SAM_STAT_GOOD ?
			   "completed" : "other";
	kprintf("scsi-tmf type=%s response=%u task=%s task_response=%u task_status=0x%02x\n",
		tmf_name(subtype), resp, task, res.response, res.status);
	if (!tmf_ok(resp))
		return "tmf-response";
	if (task[0] == 'o')
		return "aborted-task-result";
	return NULL;
}

/* A TMF then the unit attention it leaves (SAM-5: lun reset 29h/03h, I_T
 * nexus reset 29h/07h; any 29h/xx accepted unless strict=1). */
static const char *reset_then_ua(const struct lu *u, uint32_t subtype, uint8_t ascq)
{
	uint8_t resp;
	struct scsi_res res;
	const char *r = scsi_tmf(&vscsi, subtype, u->lun, 0, &resp);
	if (r)
		return r;
	kprintf("scsi-tmf type=%s response=%u\n", tmf_name(subtype), resp);
	if (!tmf_ok(resp))
		return "tmf-response";
	if ((r = tur(u->lun, 0, &res)))
		return r;
	if (res.response != VIRTIO_SCSI_S_OK || res.status != SAM_STAT_CHECK_CONDITION ||
	    res.key != SENSE_UNIT_ATTENTION) {
		print_result("test-unit-ready", u->lun, &res);
		return "no-unit-attention";
	}
	kprintf("scsi-tmf-ua type=%s lun=%u asc=0x%02x ascq=0x%02x\n", tmf_name(subtype),
		u->lun, res.asc, res.ascq);
	if (res.asc != 0x29)
		return "unexpected-unit-attention";
	if (res.ascq != ascq) {
		print_deviation(subtype == VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET ?
				"lun-reset-ua" : "it-nexus-reset-ua", &res);
		if (strict())
			return "reset-ua-ascq";
	}
	return settle(u->lun);
}

static const char *test_scsi_tmf(void)
{
	struct lu u;
	const char *r = open_lun(&u, 0);
	if (r)
		return r;
	uint32_t blocks = param("blocks", 0);
	if (!blocks)
		blocks = HALF_SIZE / u.bs;
	if (blocks * u.bs > HALF_SIZE || blocks > u.blocks)
		return "bad-blocks";

	if ((r = abort_inflight(&u, VIRTIO_SCSI_T_TMF_ABORT_TASK, blocks)))
		return r;
	if ((r = reset_then_ua(&u, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0x03)))
		return r;
	if ((r = reset_then_ua(&u, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, 0x07)))
		return r;
	if ((r = abort_inflight(&u, VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, blocks)))
		return r;

	uint8_t resp;
	uint32_t actual;
	uint32_t events = VIRTIO_SCSI_EVT_ASYNC_OPERATIONAL_CHANGE |
			  VIRTIO_SCSI_EVT_ASYNC_POWER_MGMT |
			  VIRTIO_SCSI_EVT_ASYNC_EXTERNAL_REQUEST |
			  VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE |
			  VIRTIO_SCSI_EVT_ASYNC_MULTI_HOST |
			  VIRTIO_SCSI_EVT_ASYNC_DEVICE_BUSY;
	if ((r = scsi_an_query(&vscsi, u.lun, events, &resp, &actual)))
		return r;
	kprintf("scsi-tmf type=an-query response=%u event_actual=0x%x\n", resp, actual);
	if (resp != VIRTIO_SCSI_S_OK)
		return "an-query-response";

	/* still usable */
	if ((r = settle(u.lun)))
		return r;
	memset(rbuf, 0, u.bs);
	if ((r = rw(&u, 10, 0, 0, 1, rbuf, 0, "read10")))
		return r;
	vscsi_events(&vscsi);
	kprintf("scsi-tmf read ok lun=%u\n", u.lun);
	return NULL;
}

/* ---- scsi-hostile ---- */
static const char *good_command(unsigned lun)
{
	struct lu u = { .lun = lun };
	const char *r;
	if ((r = settle(lun)) || (r = read_capacity(&u, 0)))
		return r;
	return rw(&u, 10, 0, 0, 1, rbuf, 0, "read10");
}

static const char *test_scsi_hostile(void)
{
	const char *r = vscsi_open();
	if (r)
		return r;
	struct vscsi *s = &vscsi;
	unsigned lun = param("lun", 0);
	const char *kind = param_str("kind", "loop");
	struct lu u = { .lun = lun };
	if ((r = settle(lun)) || (r = read_capacity(&u, 0)))
		return r;

	int ctx = scsi_ctx_alloc(s);
	if (ctx < 0)
		return "no-context";
	struct scsi_ctx *c = scsi_ctx(ctx);
	struct virtio_scsi_cmd_req *req = &c->req.cmd;
	memset(c->req.raw, 0, sizeof(c->req.raw));
	memset(c->resp.raw, 0, sizeof(c->resp.raw));
	c->resp.cmd.response = 0xff;
	c->resp.cmd.status = 0xff;
	scsi_lun_bytes(s, lun, req->lun);
	req->tag = ++s->next_tag;
	uint64_t rq_addr = (uintptr_t)req, rs_addr = (uintptr_t)&c->resp.cmd;
	struct vbuf b[3];
	unsigned n = 0;
	int loop = 0, expect_answer = 0;

	if (!kstrcmp(kind, "shortreq")) {
		req->cdb[0] = OP_TEST_UNIT_READY;
		b[n++] = (struct vbuf){ rq_addr, 20, 0 };	/* < 51 bytes */
		b[n++] = (struct vbuf){ rs_addr, sizeof(c->resp.cmd), 1 };
	} else if (!kstrcmp(kind, "noresp")) {
		req->cdb[0] = OP_TEST_UNIT_READY;
		b[n++] = (struct vbuf){ rq_addr, sizeof(*req), 0 };
	} else if (!kstrcmp(kind, "loop")) {
		/* Both device-readable, so the loop is the only fault. */
		req->cdb[0] = OP_TEST_UNIT_READY;
		b[n++] = (struct vbuf){ rq_addr, sizeof(*req), 0 };
		b[n++] = (struct vbuf){ (uintptr_t)wbuf, 512, 0 };
		loop = 1;
	} else if (!kstrcmp(kind, "dirmix")) {
		/* READ(10) of one block with a device-readable data buffer */
		rw_cdb(req->cdb, 10, 0, 0, 1);
		b[n++] = (struct vbuf){ rq_addr, sizeof(*req), 0 };
		b[n++] = (struct vbuf){ (uintptr_t)rbuf, u.bs, 0 };
		b[n++] = (struct vbuf){ rs_addr, sizeof(c->resp.cmd), 1 };
		expect_answer = 1;
	} else {
		return "unknown-kind";
	}

	struct vq *q = vscsi_reqq(s, 0);
	int head = scsi_chain(s, 2, ctx, b, n, 0);
	if (head < 0)
		return "submit-failed";
	if (loop) {
		/* the last descriptor points back at the head */
		unsigned d = head;
		for (unsigned k = 1; k < n; k++)
			d = q->desc[d].next;
		q->desc[d].flags |= VRING_DESC_F_NEXT;
		q->desc[d].next = head;
	}
	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG);
	vq_arm(q);
	vq_publish(q, head);
	vq_kick(q, 1);

	unsigned limit = ms_to_ticks(param("hostile-ms", 2000));
	unsigned t0 = ticks(), needs_reset = 0, used = 0;
	while (ticks() - t0 <= limit) {
		if (vdev_status(&s->vd) & VSTAT_NEEDS_RESET) {
			needs_reset = 1;
			break;
		}
		if (vq_pending(q)) {
			used = 1;
			/* answered: give a late NEEDS_RESET a moment */
			unsigned t1 = ticks();
			while (ticks() - t1 <= 10 && !needs_reset)
				needs_reset = (vdev_status(&s->vd) & VSTAT_NEEDS_RESET) != 0;
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
	unsigned pending = vq_pending(q);
	int response = -1;
	if (pending && scsi_reap(s, 2) > 0 && c->done && c->resp.cmd.response != 0xff)
		response = c->resp.cmd.response;
	kprintf("scsi-hostile detail config_irq=%u device_status=0x%x used=%u status=0x%02x\n",
		config_irq, vdev_status(&s->vd), pending, c->resp.cmd.status);

	/* Recover: reset + full re-initialisation, unless the device answered
	 * without breaking (then it must simply go on working). */
	unsigned recovered = 0;
	r = NULL;
	if (needs_reset || !expect_answer || !used)
		r = vscsi_init(s);
	if (r)
		kprintf("scsi-hostile reinit failed reason=%s\n", r);
	else if ((r = good_command(lun)))
		kprintf("scsi-hostile command failed reason=%s\n", r);
	else
		recovered = 1;
	if (response >= 0)
		kprintf("scsi-hostile kind=%s needs_reset=%u response=%d recovered=%u\n",
			kind, needs_reset, response, recovered);
	else
		kprintf("scsi-hostile kind=%s needs_reset=%u response=none recovered=%u\n",
			kind, needs_reset, recovered);
	if (!recovered)
		return "not-recovered";
	if (expect_answer) {
		if (response != VIRTIO_SCSI_S_OVERRUN)
			return "no-overrun";
		if (needs_reset)
			return "needs-reset";
		return NULL;
	}
	if (!needs_reset)
		return "no-needs-reset";
	return NULL;
}

/* ---- scsi-bench ---- */
struct bench {
	struct vscsi *s;
	struct vq *q;
	unsigned lun;
	int random, kernel_wait, irq, rw10;
	uint32_t bs, blk, seg;
	uint64_t count, units, submitted, completed, errors, rng;
	unsigned limit, depth;
	int inflight[SCSI_CTX_MAX];
	const char *fail;
};

static int bench_submit(struct bench *k)
{
	uint64_t per = k->bs / k->blk, unit;
	if (k->random) {
		k->rng = k->rng * 6364136223846793005ull + 1442695040888963407ull;
		unit = (k->rng >> 33) % k->units;
	} else {
		unit = k->submitted % k->units;
	}
	uint8_t cdb[16];
	rw_cdb(cdb, k->rw10 ? 10 : 16, 0, unit * per, (uint32_t)per);
	/* Every request reads into the same buffer (the data is not checked). */
	struct vbuf v[SCSI_MAX_BUFS];
	unsigned n = 0;
	for (uint32_t off = 0; off < k->bs; off += k->seg)
		v[n++] = (struct vbuf){ (uintptr_t)iobuf, k->seg, 1 };
	struct scsi_cmd c = { .lun = k->lun, .cdb = cdb, .cdb_len = k->rw10 ? 10 : 16,
			      .bufs = v, .nbufs = n };
	int ctx = scsi_submit(k->s, 0, &c);
	if (ctx >= 0)
		k->submitted++;
	return ctx;
}

/* The submission/completion loop. Runs at CPL3 (run_user) or CPL0; only
 * CPL0 with interrupts may halt, everything else polls the used ring. */
static uint64_t bench_loop(void *arg)
{
	struct bench *k = arg;
	struct vq *q = k->q;
	unsigned live = 0;

	for (unsigned i = 0; i < k->depth && k->submitted < k->count; i++) {
		int ctx = bench_submit(k);
		if (ctx < 0) {
			k->fail = "submit-failed";
			return 1;
		}
		k->inflight[live++] = ctx;
	}
	vq_kick(q, 0);
	unsigned t0 = ticks();
	while (k->completed < k->count) {
		int got = scsi_reap(k->s, 2);
		if (got < 0) {
			k->fail = "bad-used-id";
			return 1;
		}
		if (!got) {
			if (k->kernel_wait) {
				if ((k->fail = vq_wait(q)))
					return 1;
			} else if (ticks() - t0 > k->limit) {
				k->fail = vq_timeout_reason(q);
				return 1;
			}
			continue;
		}
		t0 = ticks();
		if (k->irq)
			vq_set_interrupts(q, 1);
		unsigned resub = 0;
		for (unsigned i = 0; i < live;) {
			struct scsi_ctx *c = scsi_ctx(k->inflight[i]);
			if (!c->done) {
				i++;
				continue;
			}
			if (c->resp.cmd.response != VIRTIO_SCSI_S_OK ||
			    c->resp.cmd.status != SAM_STAT_GOOD)
				k->errors++;
			k->completed++;
			scsi_ctx_free(k->inflight[i]);
			if (k->submitted < k->count) {
				int ctx = bench_submit(k);
				if (ctx < 0) {
					k->fail = "submit-failed";
					return 1;
				}
				k->inflight[i++] = ctx;
				resub++;
			} else {
				k->inflight[i] = k->inflight[--live];
			}
		}
		if (resub)
			vq_kick(q, 0);
	}
	return 0;
}

static const char *test_scsi_bench(void)
{
	struct lu u;
	const char *r = open_lun(&u, 0);
	if (r)
		return r;
	struct vscsi *s = &vscsi;
	struct vq *q = vscsi_reqq(s, 0);
	const char *mode = param_str("mode", "randread");
	struct bench k = { .s = s, .q = q, .lun = u.lun, .rng = param("seed", 1) };
	unsigned ring = param("ring", 3), irq = param("irq", 1);
	uint64_t depth = param("depth", 1);

	if (!kstrcmp(mode, "randread"))
		k.random = 1;
	else if (kstrcmp(mode, "seqread"))
		return "unknown-mode";
	k.bs = param("bs", 4096);
	k.blk = u.bs;
	if (!k.bs || k.bs % u.bs || k.bs > 16u * 1024 * 1024)
		return "bad-bs";
	if (s->max_sectors && k.bs / 512 > s->max_sectors)
		return "bs-above-max-sectors";
	k.seg = k.bs < IOBUF_SIZE ? k.bs : IOBUF_SIZE;
	if (k.bs % k.seg)
		return "bad-bs";
	unsigned nseg = k.bs / k.seg;
	if (nseg > SCSI_MAX_BUFS || (s->seg_max && nseg > s->seg_max))
		return "bad-bs";
	k.count = param("count", 2000);
	k.units = u.blocks / (k.bs / u.bs);
	if (!k.units)
		return "beyond-capacity";
	k.rw10 = u.blocks <= 0xffffffffull && k.bs / u.bs <= 0xffff;
	if (!depth || depth > SCSI_CTX_MAX || depth * (nseg + 2) > scsi_free_descs(2))
		return "bad-depth";
	if (ring != 0 && ring != 3)
		return "bad-ring";
	k.depth = depth;
	k.irq = irq;
	k.kernel_wait = ring == 0 && irq;
	k.limit = ms_to_ticks(param("timeout-ms", 10000));
	vq_set_interrupts(q, irq);
	if (ring == 3)
		user_init();

	unsigned irq0 = vq_irqs(q), kicks0 = q->notifies;
	outl(PORT_SYNC, 0xC0);
	if (ring == 3)
		run_user(bench_loop, &k, user_stack + sizeof(user_stack));
	else
		bench_loop(&k);
	outl(PORT_SYNC, 0xC1);

	kprintf("scsi-bench mode=%s bs=%u count=%llu bytes=%llu\n", mode, k.bs,
		(unsigned long long)k.completed,
		(unsigned long long)(k.completed * k.bs));
	kprintf("scsi-bench ring=%u depth=%llu irq=%u interrupts=%u notifies=%u errors=%llu\n",
		ring, (unsigned long long)depth, irq, vq_irqs(q) - irq0,
		q->notifies - kicks0, (unsigned long long)k.errors);
	if (k.fail)
		return k.fail;
	if (k.errors)
		return "io-errors";
	return NULL;
}

/* ---- scsi-msix-mask ---- */
/* Masks the MSI-X entry of request queue 0 (entry 3), has the device complete
 * a READ(10) of `blocks` blocks at `lba` while it is masked (polling the used
 * index, interrupts on), reads the PBA bit, unmasks and halts for the
 * interrupt the unmask must deliver. */
static const char *test_scsi_msix_mask(void)
{
	struct lu u;
	const char *r = open_lun(&u, 0);
	if (r)
		return r;
	struct vscsi *s = &vscsi;
	struct vq *q = vscsi_reqq(s, 0);
	const unsigned entry = 3;		/* slot 2 = request queue 0 */
	uintptr_t ctrl = msix_entry(&s->vd, entry) + MSIX_ENTRY_CTRL;
	unsigned limit = ms_to_ticks(param("timeout-ms", 10000));
	uint64_t lba = param("lba", 0);
	unsigned blocks = param("blocks", 1);
	if (blocks * u.bs > IOBUF_SIZE)
		return "too-many-blocks";

	MMIO(uint32_t, ctrl) = MSIX_ENTRY_CTRL_MASK;
	unsigned irq0 = vq_irqs(q);
	uint8_t cdb[16];
	struct vbuf v[1] = { { (uintptr_t)iobuf, blocks * u.bs, 1 } };
	struct scsi_cmd c = { .lun = u.lun, .cdb = cdb, .cdb_len = 10, .bufs = v, .nbufs = 1 };
	rw_cdb(cdb, 10, 0, lba, blocks);
	vq_arm(q);
	int ctx = scsi_submit(s, 0, &c);
	if (ctx < 0)
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
	while (!(pba = msix_pending(&s->vd, entry)) && ticks() - t0 <= pba_wait)
		;
	unsigned masked = vq_irqs(q) - irq0;
	kprintf("scsi-msix-mask pba=%u interrupts_while_masked=%u\n", pba, masked);

	MMIO(uint32_t, ctrl) = 0;
	unsigned wait = ms_to_ticks(param("irq-wait-ms", 2000));
	t0 = ticks();
	cli();
	while (vq_irqs(q) - irq0 == masked && ticks() - t0 <= wait)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	sti();
	unsigned delivered = vq_irqs(q) - irq0 > masked;
	kprintf("scsi-msix-mask delivered_after_unmask=%u\n", delivered);

	if (scsi_reap(s, 2) < 0)
		return "bad-used-id";
	struct scsi_res res;
	scsi_result(ctx, &res);
	if ((r = expect_good("read10", u.lun, &res)))
		return r;
	if (pba != 1)
		return "pba-not-set";
	if (masked)
		return "interrupt-while-masked";
	if (!delivered)
		return "not-delivered-after-unmask";
	return NULL;
}

/* ---- mig-scsi-loop ----
 * A workload to migrate in the middle of: `rounds` rounds; round i (tag
 * i + 1) writes blocks+1 logical blocks at lba + i * blocks (WRITE(10)), so
 * its last block is the first block of round i + 1, and reads them back.
 * Every 512-byte sector written holds
 *     u32 0x4c53534d ('MSSL'), u32 tag, u64 sector (absolute), then byte k
 *     (16..511) = (sector * 31 + k * 7 + tag) & 0xff
 * so the host can check each sector's round: in the end the blocks of round i
 * hold tag i + 1 except the overlap, which round i + 1 overwrote (a write
 * done twice, late, would leave an older tag there), and the last block
 * holds tag `rounds`. Prints "mig-scsi-loop progress i=N" every `every`
 * rounds, then reads everything back once more. hold=1 parks after PASS. */
#define MSSL_MAGIC 0x4c53534du

static void mssl_fill(uint8_t *buf, uint64_t sector, unsigned nsec, uint32_t tag)
{
	for (unsigned s = 0; s < nsec; s++, sector++) {
		uint8_t *p = buf + s * 512;
		*(uint32_t *)p = MSSL_MAGIC;
		*(uint32_t *)(p + 4) = tag;
		*(uint64_t *)(p + 8) = sector;
		uint8_t v = (uint8_t)(sector * 31 + 16 * 7 + tag);
		for (unsigned k = 16; k < 512; k++, v += 7)
			p[k] = v;
	}
}

static const char *mssl_check(const uint8_t *buf, uint64_t sector, unsigned nsec, uint32_t tag)
{
	for (unsigned s = 0; s < nsec; s++, sector++) {
		const uint8_t *p = buf + s * 512;
		uint8_t v = (uint8_t)(sector * 31 + 16 * 7 + tag);
		int bad = *(const uint32_t *)p != MSSL_MAGIC || *(const uint32_t *)(p + 4) != tag ||
			  *(const uint64_t *)(p + 8) != sector;
		for (unsigned k = 16; k < 512 && !bad; k++, v += 7)
			bad = p[k] != v;
		if (bad) {
			kprintf("mig-scsi-loop mismatch sector=%llu tag=%u want_tag=%u\n",
				(unsigned long long)sector, *(const uint32_t *)(p + 4), tag);
			return "verify-mismatch";
		}
	}
	return NULL;
}

static const char *test_mig_scsi_loop(void)
{
	struct lu u;
	const char *r = open_lun(&u, 0);
	if (r)
		return r;
	unsigned rounds = param("rounds", 100), n = param("blocks", 4), every = param("every", 10);
	uint64_t lba = param("lba", 0), delay = param("delay", 0);
	unsigned spb = u.bs / 512;
	if (!n || (n + 1) * u.bs > HALF_SIZE)
		return "bad-blocks";
	if (lba + (uint64_t)rounds * n + 1 > u.blocks || lba + (uint64_t)rounds * n + 1 > 0xffffffffull)
		return "beyond-capacity";
	kprintf("mig-scsi-loop start rounds=%u blocks=%u block_size=%u\n", rounds, n, u.bs);
	for (unsigned i = 0; i < rounds; i++) {
		uint64_t l = lba + (uint64_t)i * n;
		mssl_fill(wbuf, l * spb, (n + 1) * spb, i + 1);
		if ((r = rw(&u, 10, 1, l, n + 1, wbuf, 0, "mig-write")))
			return r;
		/* rbuf is not cleared: only the device writes it (a migration must carry those
		 * pages: the guest checks them after the read, maybe on the destination); a read
		 * that moved nothing leaves another round's sectors there, which the check sees. */
		if ((r = rw(&u, 10, 0, l, n + 1, rbuf, 0, "mig-read")))
			return r;
		if ((r = mssl_check(rbuf, l * spb, (n + 1) * spb, i + 1)))
			return r;
		if (every && (i + 1) % every == 0)
			kprintf("mig-scsi-loop progress i=%u\n", i + 1);
		for (volatile uint64_t d = 0; d < delay; d++)
			;
	}
	for (unsigned i = 0; i < rounds; i++) {
		uint64_t l = lba + (uint64_t)i * n;
		unsigned cnt = i + 1 == rounds ? n + 1 : n;
		if ((r = rw(&u, 10, 0, l, cnt, rbuf, 0, "mig-read")))
			return r;
		if ((r = mssl_check(rbuf, l * spb, cnt * spb, i + 1)))
			return r;
	}
	kprintf("mig-scsi-loop done rounds=%u\n", rounds);
	if (param("hold", 0)) {
		kprintf("guest-kit: PASS test=mig-scsi-loop\n");
		kprintf("guest-kit: holding\n");
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	return NULL;
}

/* ---- scsi-fill: write until the host's disk is full ----
 * wce=0 first turns the caching page's WCE off (MODE SELECT). Then WRITE(10)s
 * of `blocks` from `lba` (the pattern, `seed`) until one is not GOOD (or `max`
 * commands, or the end of the disk), printing each one's status and sense;
 * then two SYNCHRONIZE CACHE(10)s, printing theirs. */
static const char *test_scsi_fill(void)
{
	struct lu u;
	struct scsi_res res;
	uint8_t cdb[16];
	const char *r = open_lun(&u, 1);
	if (r)
		return r;
	uint64_t lba = param("lba", 0), max = param("max", 1024);
	uint32_t blocks = param("blocks", 16);
	unsigned seed = param("seed", 1), n = 0, failed = 0;

	if (!blocks || blocks * u.bs > HALF_SIZE)
		return "bad-blocks";
	if (!param("wce", 1)) {
		struct mode_page cache;
		if ((r = mode_sense6(u.lun, 0x08, &cache)))
			return r;
		if (!cache.ok)
			return "mode-sense-caching-failed";
		cache.page[2] &= ~0x04;
		if ((r = mode_select10(u.lun, cache.page, cache.len, &res)) ||
		    (r = expect_good("mode-select-wce", u.lun, &res)))
			return r;
		if ((r = mode_sense6(u.lun, 0x08, &cache)))
			return r;
		kprintf("scsi-fill wce=%u\n", (cache.page[2] >> 2) & 1);
	}
	for (; n < max && lba + blocks <= u.blocks && !failed; n++, lba += blocks) {
		fill_pattern(wbuf, lba, blocks, u.bs, seed);
		rw_cdb(cdb, 10, 1, lba, blocks);
		if ((r = cmd(u.lun, cdb, 10, wbuf, blocks * u.bs, 0, 0, 1, &res)))
			return r;
		kprintf("scsi-fill write lba=%llu blocks=%u response=%u status=0x%02x key=0x%02x asc=0x%02x\n",
			(unsigned long long)lba, blocks, res.response, res.status, res.key, res.asc);
		if (res.response == 0xff)
			return "response-not-written";
		failed = res.response != VIRTIO_SCSI_S_OK || res.status != SAM_STAT_GOOD;
	}
	for (unsigned i = 0; i < 2; i++) {
		uint8_t sc[10] = { OP_SYNC_CACHE_10 };
		if ((r = cmd(u.lun, sc, 10, NULL, 0, 0, 0, 1, &res)))
			return r;
		kprintf("scsi-fill sync response=%u status=0x%02x key=0x%02x asc=0x%02x\n",
			res.response, res.status, res.key, res.asc);
	}
	kprintf("scsi-fill writes=%u failed=%u\n", n, failed);
	return failed ? NULL : "no-write-failed";
}

static const struct {
	const char *name;
	test_fn fn;
} scsi_tests[] = {
	{ "scsi-scan", test_scsi_scan },
	{ "scsi-rw", test_scsi_rw },
	{ "scsi-unmap", test_scsi_unmap },
	{ "scsi-errors", test_scsi_errors },
	{ "scsi-tmf", test_scsi_tmf },
	{ "scsi-hostile", test_scsi_hostile },
	{ "scsi-bench", test_scsi_bench },
	{ "scsi-msix-mask", test_scsi_msix_mask },
	{ "scsi-fill", test_scsi_fill },
	{ "mig-scsi-loop", test_mig_scsi_loop },
};

test_fn find_scsi_test(const char *name)
{
	for (size_t i = 0; i < sizeof(scsi_tests) / sizeof(scsi_tests[0]); i++)
		if (!kstrcmp(scsi_tests[i].name, name))
			return scsi_tests[i].fn;
	return NULL;
}
