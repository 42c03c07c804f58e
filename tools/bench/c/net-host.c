/*
 * net-host: the host side of tools/bench/net-bench.js, run inside the
 * benchmark's network namespace. Written in C so that the host's own cost per
 * frame (which competes with the VMM for this machine's two CPUs) is little
 * more than the kernel's: batched system calls, no per-byte work.
 *
 *   net-host recv ADDR PORT COUNT SIZE
 *     Guest to host. Receives the guest kit's net-udp-tx datagrams on a UDP
 *     socket (recvmmsg) with kernel receive timestamps (SO_TIMESTAMPNS: when
 *     the frame entered the host stack, i.e. when the VMM wrote it to the
 *     TAP), checks every one (length, sequence number < COUNT, the body
 *     pattern and the CRC field), and reports when it has seen sequence
 *     number COUNT-1 or when a line (or EOF) arrives on stdin. Rate =
 *     (seq_last - seq_first) / (t_last - t_first) over the datagrams it
 *     received, so datagrams this socket dropped do not change it.
 *
 *   net-host send TAP DST_ADDR DST_PORT COUNT SIZE WINDOW
 *     Host to guest. After a line on stdin ("go"), sends COUNT datagrams
 *     (sequence numbers 0..COUNT-1, the net-udp-rx format) with sendmmsg,
 *     keeping at most WINDOW of them queued on the TAP: it reads the TAP's
 *     tx_packets (frames the VMM has read) and tx_dropped counters and
 *     sleeps 100 us while the VMM is WINDOW behind. The VMM thus always has
 *     frames waiting, the TAP queue never overflows, and this process does
 *     not spin on a CPU the VMM needs. Rate = frames the VMM read between
 *     the moments it had read 1% and 100% of COUNT, over that time.
 *
 * Each mode prints "ready" when set up and, at the end, one JSON line.
 *
 * Payload (tools/guest-kit/src/nettests.c), SIZE >= 8 bytes: bytes 0..3 the
 * sequence number (big-endian); 4..7 the CRC-32 (IEEE, as zlib.crc32) of
 * bytes 0..3 followed by bytes 8..SIZE-1 (big-endian); byte i >= 8 is
 * (seq + i) & 0xff. The guest checks only the CRC; this program checks both.
 *
 * The CRC of a fixed-length message is an affine function of its bits, so
 * crc(head | body) = crc(0000 | body) ^ H0[head[0]] ^ H1[head[1]] ^ H2[head[2]]
 * ^ H3[head[3]], with Hk[b] = crc(b at byte k, zeros elsewhere) ^ crc(zeros).
 * The tables are built once per run; a frame then costs four lookups.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 1472
#define BATCH 64

static uint32_t crc_tab[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_tab[i] = c;
	}
}

/* zlib.crc32(buf, crc) */
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* The payload CRC of the guest-kit format: crc32(p[8:], crc32(p[0:4])). */
static uint32_t payload_crc(const uint8_t *p, size_t size)
{
	return crc_update(crc_update(0, p, 4), p + 8, size - 8);
}

/* Head tables for payloads of `size` bytes (see the top of this file). */
static uint32_t head_tab[4][256];

static void head_tables(size_t size)
{
	uint8_t zero[MAX_SIZE] = { 0 }, m[MAX_SIZE];
	uint32_t cz = payload_crc(zero, size);
	for (int k = 0; k < 4; k++) {
		for (int b = 0; b < 256; b++) {
			memset(m, 0, size);
			m[k] = (uint8_t)b;
			head_tab[k][b] = payload_crc(m, size) ^ cz;
		}
	}
}

/* crc(0000 | body) for a body in p[8..size-1]. */
static uint32_t body_crc(const uint8_t *p, size_t size)
{
	uint8_t m[MAX_SIZE];
	memset(m, 0, 8);
	memcpy(m + 8, p + 8, size - 8);
	return payload_crc(m, size);
}

static inline uint32_t with_head(uint32_t body, uint32_t seq)
{
	return body ^ head_tab[0][seq >> 24] ^ head_tab[1][(seq >> 16) & 0xff] ^
	       head_tab[2][(seq >> 8) & 0xff] ^ head_tab[3][seq & 0xff];
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static int64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "net-host: %s: %s\n", what, strerror(errno));
	exit(1);
}

static unsigned long num(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !*s || *end) {
		fprintf(stderr, "net-host: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static struct sockaddr_in inet_addr_port(const char *addr, unsigned long port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
		fprintf(stderr, "net-host: bad address %s\n", addr);
		exit(2);
	}
	return a;
}

/* ---------------- recv ---------------- */

static int do_recv(const char *addr, unsigned long port, unsigned long count, size_t size)
{
	/* Bodies for each (seq & 0xff): byte i = (seq + i) & 0xff, so body r starts at pattern[r + 8]. */
	static uint8_t pattern[256 + MAX_SIZE];
	static uint32_t bodies[256];
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (uint8_t)i;
	for (int r = 0; r < 256; r++) {
		uint8_t p[MAX_SIZE];
		memcpy(p + 8, pattern + r + 8, size - 8);
		bodies[r] = body_crc(p, size);
	}
	uint8_t *seen = calloc(count, 1);
	static uint8_t bufs[BATCH][2048];
	static char ctl[BATCH][64];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	if (!seen)
		die("calloc");

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	int big = 64 << 20, one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0)
		die("SO_TIMESTAMPNS");
	struct sockaddr_in sa = inet_addr_port(addr, port);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind");
	printf("ready\n");
	fflush(stdout);

	unsigned long received = 0, bad = 0, dup = 0, wrong_size = 0;
	long first_seq = -1, last_seq = -1;
	int64_t first_ns = 0, last_ns = 0;
	int stop = 0, finished = 0;
	while (!finished) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){ bufs[i], sizeof(bufs[i]) };
			msgs[i].msg_hdr = (struct msghdr){ .msg_iov = &iov[i], .msg_iovlen = 1,
							   .msg_control = ctl[i], .msg_controllen = sizeof(ctl[i]) };
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				die("recvmmsg");
			if (stop)
				break;	/* the VMM has exited and the queue is empty */
			struct pollfd pf[2] = { { fd, POLLIN, 0 }, { 0, POLLIN, 0 } };
			if (poll(pf, 2, 5000) < 0 && errno != EINTR)
				die("poll");
			if (pf[1].revents) {
				char line[64];
				ssize_t r = read(0, line, sizeof(line));	/* a line or EOF: either means stop */
				(void)r;
				stop = 1;
			}
			continue;
		}
		for (int i = 0; i < n; i++) {
			const uint8_t *p = bufs[i];
			if (msgs[i].msg_len != size) {
				wrong_size++;
				continue;
			}
			uint32_t seq = get32(p);
			if (seq >= count || get32(p + 4) != with_head(bodies[seq & 0xff], seq) ||
			    memcmp(p + 8, pattern + (seq & 0xff) + 8, size - 8)) {
				bad++;
				continue;
			}
			if (seen[seq]) {
				dup++;
				continue;
			}
			seen[seq] = 1;
			received++;
			int64_t ts = 0;
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
				if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
					struct timespec t;
					memcpy(&t, CMSG_DATA(c), sizeof(t));
					ts = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
				}
			}
			if (!ts)
				ts = now_ns(CLOCK_REALTIME);
			if (first_seq < 0) {
				first_seq = seq;
				first_ns = ts;
			}
			last_seq = seq;
			last_ns = ts;
			if (seq == count - 1)
				finished = 1;	/* older ones still queued are taken below */
		}
	}
	/* What is still queued (sequence numbers before the last). */
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){ bufs[i], sizeof(bufs[i]) };
			msgs[i].msg_hdr = (struct msghdr){ .msg_iov = &iov[i], .msg_iovlen = 1 };
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++) {
			uint32_t seq = get32(bufs[i]);
			if (msgs[i].msg_len == size && seq < count && !seen[seq]) {
				seen[seq] = 1;
				received++;
			}
		}
	}
	printf("{\"received\": %lu, \"bad\": %lu, \"dup\": %lu, \"wrongSize\": %lu, \"lost\": %lu",
	       received, bad, dup, wrong_size, count - received);
	if (last_seq > first_seq && last_ns > first_ns)
		printf(", \"firstSeq\": %ld, \"lastSeq\": %ld, \"ns\": %lld, \"pps\": %.1f", first_seq,
		       last_seq, (long long)(last_ns - first_ns),
		       (double)(last_seq - first_seq) * 1e9 / (double)(last_ns - first_ns));
	printf("}\n");
	return 0;
}

/* ---------------- send ---------------- */

static long long counter(int fd)
{
	char b[32];
	ssize_t n = pread(fd, b, sizeof(b) - 1, 0);
	if (n <= 0)
		die("reading a TAP counter");
	b[n] = 0;
	return atoll(b);
}

static int do_send(const char *tap, const char *addr, unsigned long port, unsigned long count,
		   size_t size, unsigned long window)
{
	char path[256];
	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/tx_packets", tap);
	int fd_tx = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/tx_dropped", tap);
	int fd_drop = open(path, O_RDONLY);
	if (fd_tx < 0 || fd_drop < 0)
		die("opening the TAP's statistics");

	/* One body for every datagram: sequence number 0's (the guest checks the CRC, not the pattern). */
	static uint8_t body[MAX_SIZE];
	for (size_t i = 8; i < size; i++)
		body[i] = (uint8_t)i;
	uint32_t bcrc = body_crc(body, size);
	static uint8_t heads[BATCH][8];
	struct iovec iov[BATCH][2];
	struct mmsghdr msgs[BATCH];

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	int sndbuf = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	struct sockaddr_in sa = inet_addr_port(addr, port);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	printf("ready\n");
	fflush(stdout);
	char line[64];
	if (read(0, line, sizeof(line)) <= 0) {
		fprintf(stderr, "net-host: no \"go\" on stdin\n");
		return 1;
	}

	long long base_tx = counter(fd_tx), base_drop = counter(fd_drop);
	unsigned long sent = 0, sleeps = 0, send_errors = 0, lo = count / 100 ? count / 100 : 1;
	long long done = 0, dropped = 0, queued_sum = 0, iterations = 0;
	int64_t start = now_ns(CLOCK_MONOTONIC), t_lo = 0, t_end = 0, slept = 0;
	long long done_lo = 0;
	int64_t deadline = start + 120LL * 1000000000;
	for (;;) {
		int64_t now = now_ns(CLOCK_MONOTONIC);
		done = counter(fd_tx) - base_tx;
		dropped = counter(fd_drop) - base_drop;
		if (!t_lo && done >= (long long)lo) {
			t_lo = now;
			done_lo = done;
		}
		if (done >= (long long)count) {
			t_end = now;
			break;
		}
		if (now > deadline)
			break;
		long long queued = (long long)sent - done - dropped;
		queued_sum += queued;
		iterations++;
		long long room = (long long)window - queued;
		if (sent < count && room > 0) {
			unsigned n = (unsigned)(room < BATCH ? room : BATCH);
			if (n > count - sent)
				n = (unsigned)(count - sent);
			for (unsigned i = 0; i < n; i++) {
				uint32_t seq = (uint32_t)(sent + i);
				put32(heads[i], seq);
				put32(heads[i] + 4, with_head(bcrc, seq));
				iov[i][0] = (struct iovec){ heads[i], 8 };
				iov[i][1] = (struct iovec){ body + 8, size - 8 };
				msgs[i].msg_hdr = (struct msghdr){ .msg_iov = iov[i], .msg_iovlen = 2 };
			}
			int k = sendmmsg(fd, msgs, n, 0);
			if (k < 0) {
				send_errors++;
				k = 0;
			}
			sent += (unsigned)k;
			if ((unsigned)k < n) {
				struct timespec ts = { 0, 100000 };
				nanosleep(&ts, NULL);
			}
		} else {
			struct timespec ts = { 0, 100000 };
			int64_t a = now_ns(CLOCK_MONOTONIC);
			nanosleep(&ts, NULL);
			slept += now_ns(CLOCK_MONOTONIC) - a;
			sleeps++;
		}
	}
	int64_t total = now_ns(CLOCK_MONOTONIC) - start;
	printf("{\"sent\": %lu, \"delivered\": %lld, \"tapDropped\": %lld, \"sleeps\": %lu, \"sleptFraction\": %.3f, "
	       "\"avgQueued\": %.1f, \"sendErrors\": %lu, \"timedOut\": %s",
	       sent, done, dropped, sleeps, total > 0 ? (double)slept / (double)total : 0.0,
	       iterations ? (double)queued_sum / (double)iterations : 0.0, send_errors,
	       done < (long long)count ? "true" : "false");
	if (t_lo && t_end > t_lo && done > done_lo)
		printf(", \"ns\": %lld, \"frames\": %lld, \"pps\": %.1f", (long long)(t_end - t_lo),
		       done - done_lo, (double)(done - done_lo) * 1e9 / (double)(t_end - t_lo));
	printf("}\n");
	return 0;
}

int main(int argc, char **argv)
{
	crc_init();
	if (argc == 6 && !strcmp(argv[1], "recv")) {
		size_t size = num(argv[5], "size");
		if (size < 8 || size > MAX_SIZE)
			goto usage;
		head_tables(size);
		return do_recv(argv[2], num(argv[3], "port"), num(argv[4], "count"), size);
	}
	if (argc == 8 && !strcmp(argv[1], "send")) {
		size_t size = num(argv[6], "size");
		if (size < 8 || size > MAX_SIZE)
			goto usage;
		head_tables(size);
		return do_send(argv[2], argv[3], num(argv[4], "port"), num(argv[5], "count"), size,
			       num(argv[7], "window"));
	}
usage:
	fprintf(stderr, "usage: net-host recv ADDR PORT COUNT SIZE\n"
			"       net-host send TAP DST_ADDR DST_PORT COUNT SIZE WINDOW\n"
			"(SIZE: UDP payload, 8..%d bytes)\n", MAX_SIZE);
	return 2;
}
