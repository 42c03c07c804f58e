/*
 * guest-kit: the net-* tests on the virtio-net driver (vnet.c), with just
 * enough of Ethernet, ARP (RFC 826), IPv4 (RFC 791), ICMP echo (RFC 792)
 * and UDP (RFC 768) to talk to the host at the other end of a TAP.
 *
 * The guest computes every checksum itself (no offloads are negotiated) and
 * checks the ones it receives. It answers ARP requests for its address and
 * ICMP echo requests whenever it is reading frames, so the host's neighbour
 * entry for it stays valid during long tests.
 *
 * UDP payload (both directions), `size` bytes, size >= 8:
 *   bytes 0..3  sequence number, big-endian
 *   bytes 4..7  CRC-32 (IEEE, zlib.crc32) of bytes 0..3 followed by bytes
 *               8..size-1, big-endian:
 *               zlib.crc32(p[8:], zlib.crc32(p[0:4]))
 *   bytes 8..   byte i = (seq + i) & 0xff (what the guest sends; the
 *               receiver checks only the CRC)
 */
#include "net.h"

#define NET_UDP_MAX_COUNT (1u << 18)	/* sequence numbers tracked by net-udp-rx */
#define UDP_MAX_PAYLOAD   (1500 - IP_HLEN - UDP_HLEN)
#define ECHO_ID           0x676b	/* "gk" */
#define ECHO_MAX          (1500 - IP_HLEN - ICMP_HLEN)

typedef uint16_t __attribute__((may_alias, aligned(1))) u16_un;
typedef uint32_t __attribute__((may_alias, aligned(1))) u32_un;

static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t zero_mac[6];

struct netstate {
	uint8_t ip[4], peer[4];
	unsigned mask_bits;
	uint8_t peer_mac[6];
	int peer_known, arp_reply_seen;
	uint16_t ip_id;
	int kernel;			/* 1: CPL0, may halt; 0: ring 3, polls */
	const char *fail;		/* set by anything that gives up */
	unsigned limit;			/* ticks: timeout-ms for transmit waits */
	unsigned irq_grace;		/* ticks: irq-grace-ms, how long an owed interrupt may take */
	/* ICMP echo we are waiting for */
	uint16_t echo_seq;
	int echo_ok;
	unsigned echo_len;
	uint8_t echo_data[ECHO_MAX];
	/* net-udp-rx */
	uint16_t udp_port;
	uint32_t udp_count, received, bad, dup;
	unsigned last_new;		/* tick of the last new datagram */
	/* other counters */
	uint32_t frames, other, ip_bad, arp_replies, echo_replies;
};

static struct netstate ns;
static uint8_t udp_seen[NET_UDP_MAX_COUNT / 8];
static uint8_t user_stack[16384] __attribute__((aligned(16)));

/* ---- byte order ---- */
static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * RFC 1071 Internet checksum. The sum is taken over little-endian words
 * (byte order does not change a ones-complement sum, only swaps its bytes),
 * so csum_fold's result is stored with a native 16-bit store and reads as
 * the network-order checksum. A chunk passed to csum_add must start at an
 * even offset of the summed data (all but the last chunk of even length).
 */
static uint64_t csum_add(uint64_t sum, const void *buf, unsigned len)
{
	const uint8_t *p = buf;
	while (len >= 4) {
		sum += *(const u32_un *)p;
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		sum += *(const u16_un *)p;
		p += 2;
		len -= 2;
	}
	if (len)
		sum += *p;
	return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* UDP over IPv4: pseudo header (source, destination, 0, protocol, length). */
static uint64_t pseudo_sum(const uint8_t *src, const uint8_t *dst, uint8_t proto,
			   uint16_t len)
{
	uint8_t ph[12];
	memcpy(ph, src, 4);
	memcpy(ph + 4, dst, 4);
	ph[8] = 0;
	ph[9] = proto;
	put16(ph + 10, len);
	return csum_add(0, ph, sizeof(ph));
}

/* ---- the UDP payload format (see the top of this file) ---- */
static uint32_t payload_crc(const uint8_t *p, unsigned len)
{
	return crc32_update(crc32_update(0, p, 4), p + 8, len - 8);
}

static void payload_fill(uint8_t *p, unsigned len, uint32_t seq)
{
	put32(p, seq);
	uint8_t v = (uint8_t)(seq + 8);
	for (unsigned i = 8; i < len; i++)
		p[i] = v++;
	put32(p + 4, payload_crc(p, len));
}

/* ---- waiting (CPL0 only) ---- */
static char lost_reason[32];

/*
 * Arms the queues and halts until one is vq_ready or `limit` ticks after t0
 * have passed: 1 = ready, 0 = timeout. -1 = a queue has used entries but
 * the interrupt the device owed for them never came (reported).
 */
static int halt_ready(struct vq *const *qs, unsigned n, unsigned t0, unsigned limit)
{
	for (unsigned i = 0; i < n; i++)
		vq_arm(qs[i]);
	cli();
	for (;;) {
		for (unsigned i = 0; i < n; i++) {
			if (vq_ready(qs[i])) {
				sti();
				return 1;
			}
		}
		if (ticks() - t0 > limit)
			break;
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	sti();
	for (unsigned i = 0; i < n; i++) {
		struct vq *q = qs[i];
		if (!vq_pending(q))
			continue;
		/* An interrupt may be on its way: a few more ticks (irq-grace-ms more,
		 * e.g. while the host's stall detector finds it lost and recovers it). */
		unsigned t1 = ticks();
		cli();
		while (!vq_ready(q) && ticks() - t1 < 5 + ns.irq_grace)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		sti();
		if (vq_ready(q))
			return 1;
		kprintf("net: lost interrupt queue=%u pending=%u interrupts=%u\n",
			q->index, vq_pending(q), irq_count(q->vector) - q->irq_snap);
		const char *pfx = "lost-interrupt-queue-";
		unsigned k = 0;
		while (*pfx)
			lost_reason[k++] = *pfx++;
		if (q->index >= 10)
			lost_reason[k++] = '0' + q->index / 10;
		lost_reason[k++] = '0' + q->index % 10;
		lost_reason[k] = '\0';
		ns.fail = lost_reason;
		return -1;
	}
	return 0;
}

static void sleep_ticks(unsigned n)
{
	unsigned t0 = ticks();
	cli();
	while (ticks() - t0 < n)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	sti();
}

/* ---- transmit ---- */
/* A free transmit slot's frame area; waits for one (halting at CPL0,
 * polling in ring 3) up to ns.limit. NULL: ns.fail says why. */
static uint8_t *tx_begin(unsigned pair, unsigned *slot)
{
	struct vq *q = vnet.p[pair].tx;
	unsigned t0 = ticks();

	for (;;) {
		uint8_t *b = vnet_tx_get(&vnet, pair, slot);
		if (b)
			return b;
		if (vnet_error) {
			ns.fail = vnet_error;
			return NULL;
		}
		if (ticks() - t0 > ns.limit) {
			ns.fail = "tx-timeout";
			return NULL;
		}
		if (ns.kernel) {
			int r = halt_ready(&q, 1, t0, ns.limit);
			vq_set_interrupts(q, 0);
			if (r < 0)
				return NULL;
		}
	}
}

static void tx_end(unsigned pair, unsigned slot, unsigned len)
{
	vnet_tx_put(&vnet, pair, slot, len);
	vnet_tx_kick(&vnet, pair);
}

/* Waits until the device has used every frame queued on the pair. */
static int tx_drain(unsigned pair)
{
	struct vq *q = vnet.p[pair].tx;
	unsigned t0 = ticks();

	for (;;) {
		if (vnet_tx_reclaim(&vnet, pair) < 0) {
			ns.fail = vnet_error;
			return -1;
		}
		if (!vnet_tx_inflight(&vnet, pair))
			return 0;
		if (ticks() - t0 > ns.limit) {
			ns.fail = "tx-timeout";
			return -1;
		}
		if (ns.kernel) {
			int r = halt_ready(&q, 1, t0, ns.limit);
			vq_set_interrupts(q, 0);
			if (r < 0)
				return -1;
		}
	}
}

static uint8_t *eth_header(uint8_t *b, const uint8_t *dst, uint16_t type)
{
	memcpy(b, dst, 6);
	memcpy(b + 6, vnet.mac, 6);
	put16(b + 12, type);
	return b + ETH_HLEN;
}

static void ip_header(uint8_t *ip, uint8_t proto, const uint8_t *dst, unsigned plen)
{
	ip[0] = 0x45;			/* version 4, 5 words */
	ip[1] = 0;
	put16(ip + 2, IP_HLEN + plen);
	put16(ip + 4, ns.ip_id++);
	put16(ip + 6, 0x4000);		/* DF, offset 0 */
	ip[8] = 64;
	ip[9] = proto;
	ip[10] = ip[11] = 0;
	memcpy(ip + 12, ns.ip, 4);
	memcpy(ip + 16, dst, 4);
	*(u16_un *)(ip + 10) = csum_fold(csum_add(0, ip, IP_HLEN));
}

/* Pads to the Ethernet minimum and queues the frame. */
static void tx_frame(unsigned pair, unsigned slot, uint8_t *b, unsigned len)
{
	if (len < ETH_ZLEN) {
		memset(b + len, 0, ETH_ZLEN - len);
		len = ETH_ZLEN;
	}
	tx_end(pair, slot, len);
}

static int send_arp(unsigned pair, uint16_t oper, const uint8_t *tha, const uint8_t *tpa)
{
	unsigned slot;
	uint8_t *b = tx_begin(pair, &slot);
	if (!b)
		return -1;
	uint8_t *a = eth_header(b, oper == 1 ? bcast_mac : tha, ETH_P_ARP);
	put16(a, 1);			/* Ethernet */
	put16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, oper);
	memcpy(a + 8, vnet.mac, 6);
	memcpy(a + 14, ns.ip, 4);
	memcpy(a + 18, oper == 1 ? zero_mac : tha, 6);
	memcpy(a + 24, tpa, 4);
	tx_frame(pair, slot, b, ETH_HLEN + 28);
	return 0;
}

static int send_udp(unsigned pair, uint16_t sport, uint16_t dport, uint32_t seq,
		    unsigned size)
{
	unsigned slot;
	uint8_t *b = tx_begin(pair, &slot);
	if (!b)
		return -1;
	uint8_t *ip = eth_header(b, ns.peer_mac, ETH_P_IP);
	uint8_t *u = ip + IP_HLEN;
	unsigned ulen = UDP_HLEN + size;
	ip_header(ip, IPPROTO_UDP, ns.peer, ulen);
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, ulen);
	put16(u + 6, 0);
	payload_fill(u + UDP_HLEN, size, seq);
	uint16_t c = csum_fold(csum_add(pseudo_sum(ns.ip, ns.peer, IPPROTO_UDP, ulen), u, ulen));
	*(u16_un *)(u + 6) = c ? c : 0xffff;	/* 0 would mean "no checksum" */
	tx_frame(pair, slot, b, ETH_HLEN + IP_HLEN + ulen);
	return 0;
}

/* ICMP echo: request (type 8) to the peer, or a reply (type 0) to `dst`. */
static int send_icmp_echo(unsigned pair, uint8_t type, const uint8_t *dmac,
			  const uint8_t *dst, uint16_t id, uint16_t seq,
			  const uint8_t *data, unsigned dlen)
{
	unsigned slot;
	uint8_t *b = tx_begin(pair, &slot);
	if (!b)
		return -1;
	uint8_t *ip = eth_header(b, dmac, ETH_P_IP);
	uint8_t *ic = ip + IP_HLEN;
	ip_header(ip, IPPROTO_ICMP, dst, ICMP_HLEN + dlen);
	ic[0] = type;
	ic[1] = 0;
	put16(ic + 2, 0);
	put16(ic + 4, id);
	put16(ic + 6, seq);
	memcpy(ic + ICMP_HLEN, data, dlen);
	*(u16_un *)(ic + 2) = csum_fold(csum_add(0, ic, ICMP_HLEN + dlen));
	tx_frame(pair, slot, b, ETH_HLEN + IP_HLEN + ICMP_HLEN + dlen);
	return 0;
}

/* ---- receive ---- */
static void arp_input(unsigned pair, const uint8_t *a, unsigned len)
{
	if (len < 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4) {
		ns.other++;
		return;
	}
	uint16_t oper = get16(a + 6);
	const uint8_t *sha = a + 8, *spa = a + 14, *tpa = a + 24;
	if (!memcmp(spa, ns.peer, 4)) {	/* RFC 826: merge the sender */
		memcpy(ns.peer_mac, sha, 6);
		ns.peer_known = 1;
		if (oper == 2)
			ns.arp_reply_seen = 1;
	}
	if (oper == 1 && !memcmp(tpa, ns.ip, 4)) {
		uint8_t mac[6], ip[4];
		memcpy(mac, sha, 6);
		memcpy(ip, spa, 4);
		if (send_arp(pair, 2, mac, ip) == 0)
			ns.arp_replies++;
	}
}

static void icmp_input(unsigned pair, const uint8_t *e, const uint8_t *ip,
		       const uint8_t *ic, unsigned len)
{
	if (len < ICMP_HLEN || csum_fold(csum_add(0, ic, len))) {
		ns.ip_bad++;
		return;
	}
	uint16_t id = get16(ic + 4), seq = get16(ic + 6);
	if (ic[0] == 0 && id == ECHO_ID && seq == ns.echo_seq &&
	    len == ICMP_HLEN + ns.echo_len &&
	    !memcmp(ic + ICMP_HLEN, ns.echo_data, ns.echo_len)) {
		ns.echo_ok = 1;
	} else if (ic[0] == 8 && len <= ICMP_HLEN + ECHO_MAX) {
		uint8_t mac[6], src[4];
		memcpy(mac, e + 6, 6);
		memcpy(src, ip + 12, 4);
		if (send_icmp_echo(pair, 0, mac, src, id, seq, ic + ICMP_HLEN,
				   len - ICMP_HLEN) == 0)
			ns.echo_replies++;
	} else {
		ns.other++;
	}
}

static void udp_input(const uint8_t *ip, const uint8_t *u, unsigned len)
{
	if (len < UDP_HLEN || get16(u + 4) < UDP_HLEN || get16(u + 4) > len) {
		ns.bad++;
		return;
	}
	unsigned ulen = get16(u + 4);
	if (get16(u + 2) != ns.udp_port || !ns.udp_count) {
		ns.other++;
		return;
	}
	if (get16(u + 6) &&
	    csum_fold(csum_add(pseudo_sum(ip + 12, ip + 16, IPPROTO_UDP, ulen), u, ulen))) {
		ns.bad++;
		return;
	}
	const uint8_t *p = u + UDP_HLEN;
	unsigned plen = ulen - UDP_HLEN;
	if (plen < 8 || get32(p + 4) != payload_crc(p, plen) || get32(p) >= ns.udp_count) {
		ns.bad++;
		return;
	}
	uint32_t seq = get32(p);
	if (udp_seen[seq / 8] & (1u << (seq % 8))) {
		ns.dup++;
		return;
	}
	udp_seen[seq / 8] |= 1u << (seq % 8);
	ns.received++;
	ns.last_new = ticks();
}

static void ip_input(unsigned pair, const uint8_t *e, unsigned flen)
{
	const uint8_t *ip = e + ETH_HLEN;
	unsigned len = flen - ETH_HLEN;
	if (len < IP_HLEN || ip[0] >> 4 != 4) {
		ns.other++;
		return;
	}
	unsigned ihl = (ip[0] & 15) * 4, tot = get16(ip + 2);
	if (ihl < IP_HLEN || tot < ihl || tot > len || csum_fold(csum_add(0, ip, ihl))) {
		ns.ip_bad++;
		return;
	}
	if (memcmp(ip + 16, ns.ip, 4) || (get16(ip + 6) & 0x3fff)) {
		ns.other++;		/* not ours, or a fragment */
		return;
	}
	if (ip[9] == IPPROTO_ICMP)
		icmp_input(pair, e, ip, ip + ihl, tot - ihl);
	else if (ip[9] == IPPROTO_UDP)
		udp_input(ip, ip + ihl, tot - ihl);
	else
		ns.other++;
}

static void net_input(const struct rxframe *f)
{
	const uint8_t *e = f->data;

	ns.frames++;
	if (f->len < ETH_HLEN || (memcmp(e, vnet.mac, 6) && memcmp(e, bcast_mac, 6))) {
		ns.other++;
		return;
	}
	uint16_t type = get16(e + 12);
	if (type == ETH_P_ARP)
		arp_input(f->pair, e + ETH_HLEN, f->len - ETH_HLEN);
	else if (type == ETH_P_IP)
		ip_input(f->pair, e, f->len);
	else
		ns.other++;	/* IPv6 router solicitations and the like */
}

/* Handles every complete frame on the active pairs: count, or -1. */
static int rx_all(void)
{
	int total = 0;
	for (unsigned p = 0; p < vnet.active; p++) {
		struct rxframe f;
		int r;
		while ((r = vnet_rx_poll(&vnet, p, &f)) > 0) {
			net_input(&f);
			total++;
			if (ns.fail)
				return -1;
		}
		if (r < 0) {
			ns.fail = vnet_error;
			return -1;
		}
	}
	return total;
}

static int rx_any_pending(void)
{
	for (unsigned p = 0; p < vnet.active; p++)
		if (vq_pending(vnet.p[p].rx))
			return 1;
	return 0;
}

/* Handles what has arrived; if nothing had, first waits up to `wait` ticks
 * for a frame. Frames handled, or -1 (ns.fail). */
static int net_pump(unsigned wait)
{
	int n = rx_all();
	if (n)
		return n;
	unsigned t0 = ticks();
	if (ns.kernel) {
		struct vq *qs[NET_MAX_PAIRS];
		for (unsigned p = 0; p < vnet.active; p++)
			qs[p] = vnet.p[p].rx;
		if (halt_ready(qs, vnet.active, t0, wait) < 0)
			return -1;
	} else {
		while (!rx_any_pending() && ticks() - t0 <= wait)
			;
	}
	return rx_all();
}

/* ---- setup ---- */
static int parse_ip(const char *s, uint8_t out[4])
{
	for (unsigned i = 0; i < 4; i++) {
		unsigned v = 0, digits = 0;
		while (*s >= '0' && *s <= '9' && digits < 4) {
			v = v * 10 + (*s++ - '0');
			digits++;
		}
		if (!digits || v > 255)
			return 0;
		out[i] = (uint8_t)v;
		if (i < 3 && *s++ != '.')
			return 0;
	}
	return *s == '\0';
}

static int same_subnet(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	uint32_t mask = bits ? ~0u << (32 - bits) : 0;
	return ((get32(a) ^ get32(b)) & mask) == 0;
}

/* Parameters ip, peer, mask-bits, pairs; then the device. */
static const char *net_setup(unsigned pairs, int post_rx)
{
	memset(&ns, 0, sizeof(ns));
	ns.kernel = 1;
	ns.limit = ms_to_ticks(param("timeout-ms", 10000));
	if (!parse_ip(param_str("ip", "10.0.2.15"), ns.ip) ||
	    !parse_ip(param_str("peer", "10.0.2.2"), ns.peer))
		return "bad-ip";
	ns.mask_bits = param("mask-bits", 24);
	if (ns.mask_bits > 32)
		return "bad-mask-bits";
	if (!same_subnet(ns.ip, ns.peer, ns.mask_bits))
		return "peer-not-on-link";
	crc32(NULL, 0);			/* build the CRC tables now, at CPL0 */
	const char *r = vnet_open(pairs, post_rx);
	if (r)
		return r;
	/* The limit was computed before vnet_open started the tick. */
	ns.limit = ms_to_ticks(param("timeout-ms", 10000));
	ns.irq_grace = ms_to_ticks(param("irq-grace-ms", 0));
	return NULL;
}

/* ARP request for the peer, resent every second, until its reply. */
static const char *arp_resolve(void)
{
	unsigned limit = ms_to_ticks(param("timeout-ms", 10000));
	unsigned t0 = ticks(), last = 0, sent = 0;

	ns.arp_reply_seen = 0;
	while (!ns.arp_reply_seen) {
		if (!sent || ticks() - last >= ms_to_ticks(1000)) {
			if (send_arp(0, 1, zero_mac, ns.peer) < 0)
				return ns.fail;
			last = ticks();
			sent++;
		}
		if (ticks() - t0 > limit)
			return "arp-timeout";
		if (net_pump(ms_to_ticks(100)) < 0)
			return ns.fail;
	}
	const uint8_t *m = ns.peer_mac;
	kprintf("net-arp reply mac=%02x:%02x:%02x:%02x:%02x:%02x\n",
		m[0], m[1], m[2], m[3], m[4], m[5]);
	return NULL;
}

static unsigned pairs_param(unsigned dflt)
{
	return param("pairs", dflt);
}

/* ---- net-arp ---- */
static const char *test_net_arp(void)
{
	const char *r = net_setup(pairs_param(1), 1);
	return r ? r : arp_resolve();
}

/* ---- net-ping ---- */
static const char *test_net_ping(void)
{
	const char *r = net_setup(pairs_param(1), 1);
	if (r || (r = arp_resolve()))
		return r;
	unsigned count = param("count", 3), received = 0;
	unsigned limit = ms_to_ticks(param("timeout-ms", 10000));
	ns.echo_len = param("size", 56);
	if (ns.echo_len > ECHO_MAX)
		return "bad-size";

	for (unsigned seq = 1; seq <= count; seq++) {
		ns.echo_seq = (uint16_t)seq;
		ns.echo_ok = 0;
		for (unsigned i = 0; i < ns.echo_len; i++)
			ns.echo_data[i] = (uint8_t)(seq * 3 + i);
		if (send_icmp_echo(0, 8, ns.peer_mac, ns.peer, ECHO_ID, (uint16_t)seq,
				   ns.echo_data, ns.echo_len) < 0)
			return ns.fail;
		unsigned t0 = ticks();
		while (!ns.echo_ok && ticks() - t0 <= limit)
			if (net_pump(ms_to_ticks(100)) < 0)
				return ns.fail;
		if (ns.echo_ok) {
			kprintf("net-ping seq=%u ok\n", seq);
			received++;
		} else {
			kprintf("net-ping seq=%u timeout\n", seq);
		}
	}
	kprintf("net-ping received=%u\n", received);
	kprintf("net-ping detail size=%u multi_buffer=%u empty=%u\n", ns.echo_len,
		vnet.p[0].rx_multi, vnet.p[0].rx_empty);
	return received == count ? NULL : "lost-replies";
}

/* ---- net-udp-tx ---- */
struct udp_tx {
	unsigned count, size, sent;
	uint16_t sport, dport;
};

/* Runs at CPL3 (run_user) or CPL0. */
static uint64_t udp_tx_loop(void *arg)
{
	struct udp_tx *t = arg;
	for (; t->sent < t->count; t->sent++)
		if (send_udp(0, t->sport, t->dport, t->sent, t->size) < 0)
			return 1;
	return tx_drain(0) < 0;
}

static const char *test_net_udp_tx(void)
{
	const char *r = net_setup(1, 1);
	if (r || (r = arp_resolve()))
		return r;
	struct udp_tx t = {
		.count = param("count", 1000), .size = param("size", 64),
		.sport = param("sport", 5556), .dport = param("port", 5555),
	};
	unsigned ring = param("ring", 3);
	if (t.size < 8 || t.size > UDP_MAX_PAYLOAD)
		return "bad-size";
	if (ring != 0 && ring != 3)
		return "bad-ring";
	struct vq *q = vnet.p[0].tx;
	unsigned irq0 = vq_irqs(q), kicks0 = q->notifies;

	outl(PORT_SYNC, 0xD2);
	if (ring == 3) {
		user_init();
		ns.kernel = 0;
		run_user(udp_tx_loop, &t, user_stack + sizeof(user_stack));
		ns.kernel = 1;
	} else {
		udp_tx_loop(&t);
	}
	outl(PORT_SYNC, 0xD3);
	kprintf("net-udp-tx sent=%u\n", t.sent);
	kprintf("net-udp-tx ring=%u size=%u notifies=%u interrupts=%u\n", ring, t.size,
		q->notifies - kicks0, vq_irqs(q) - irq0);
	return ns.fail;
}

/* ---- net-udp-rx ---- */
struct udp_rx {
	unsigned idle;			/* ticks without a new datagram */
};

static uint64_t udp_rx_loop(void *arg)
{
	struct udp_rx *x = arg;
	while (ns.received < ns.udp_count && ticks() - ns.last_new <= x->idle)
		if (net_pump(ms_to_ticks(100)) < 0)
			return 1;
	return 0;
}

static const char *test_net_udp_rx(void)
{
	unsigned count = param("count", 1000), starve = param("starve-ms", 0);
	unsigned ring = param("ring", 0);
	if (!count || count > NET_UDP_MAX_COUNT)
		return "bad-count";
	if (ring != 0 && ring != 3)
		return "bad-ring";
	const char *r = net_setup(1, !starve);
	if (r)
		return r;
	if (!starve) {
		if ((r = arp_resolve()))
			return r;
	} else if (send_arp(0, 1, zero_mac, ns.peer) < 0) {
		/* No receive buffers yet: just announce ourselves. */
		return ns.fail;
	}
	memset(udp_seen, 0, (count + 7) / 8);
	ns.udp_port = param("port", 5556);
	ns.udp_count = count;
	struct udp_rx x = { ms_to_ticks(param("timeout-ms", 20000)) };
	struct vq *q = vnet.p[0].rx;

	kprintf("net-udp-rx ready\n");
	outl(PORT_SYNC, 0xD0);
	if (starve) {
		sleep_ticks(ms_to_ticks(starve));
		vnet_rx_post(&vnet, 0);
		outl(PORT_SYNC, 0xD1);
		kprintf("net-udp-rx refilled starve_ms=%u\n", starve);
	}
	unsigned irq0 = vq_irqs(q);
	ns.last_new = ticks();
	if (ring == 3) {
		user_init();
		for (unsigned p = 0; p < vnet.active; p++)
			vq_set_interrupts(vnet.p[p].rx, 0);
		ns.kernel = 0;
		run_user(udp_rx_loop, &x, user_stack + sizeof(user_stack));
		ns.kernel = 1;
	} else {
		udp_rx_loop(&x);
	}
	unsigned first_missing = count;
	for (unsigned s = 0; s < count; s++) {
		if (!(udp_seen[s / 8] & (1u << (s % 8)))) {
			first_missing = s;
			break;
		}
	}
	kprintf("net-udp-rx received=%u bad=%u first_missing=%u\n", ns.received,
		ns.bad + ns.ip_bad, first_missing);
	kprintf("net-udp-rx detail dup=%u other=%u frames=%u multi_buffer=%u empty=%u interrupts=%u ring=%u arp_replies=%u\n",
		ns.dup, ns.other, ns.frames, vnet.p[0].rx_multi, vnet.p[0].rx_empty,
		vq_irqs(q) - irq0, ring, ns.arp_replies);
	if (ns.fail)
		return ns.fail;
	if (ns.bad + ns.ip_bad)
		return "bad-datagrams";
	if (starve)
		return ns.received >= 1 ? NULL : "nothing-after-refill";
	return ns.received == count ? NULL : "missing-datagrams";
}

/* ---- net-mq ---- */
static const char *test_net_mq(void)
{
	const char *r = net_setup(pairs_param(2), 1);
	if (r || (r = arp_resolve()))
		return r;
	unsigned size = param("size", 64), sport = param("sport", 5556);
	unsigned dport = param("port", 5555);
	if (size < 8 || size > UDP_MAX_PAYLOAD)
		return "bad-size";
	for (unsigned p = 0; p < vnet.pairs; p++) {
		struct vq *q = vnet.p[p].tx;
		uint16_t used0 = vq_used_idx(q);
		for (unsigned k = 0; k < 10; k++)
			if (send_udp(p, (uint16_t)(sport + p), (uint16_t)dport, p * 10 + k, size) < 0)
				return ns.fail;
		if (tx_drain(p) < 0)
			return ns.fail;
		kprintf("net-mq pair=%u sent=%u\n", p, (unsigned)(uint16_t)(vq_used_idx(q) - used0));
	}
	return NULL;
}

/* ---- for hostile.c (test=hostile-net) ---- */
const char *net_hostile_setup(int post_rx)
{
	return net_setup(1, post_rx);
}

const char *net_hostile_arp(void)
{
	return arp_resolve();
}

int net_hostile_arp_request(void)
{
	return send_arp(0, 1, zero_mac, ns.peer);
}

/* ---- net-hostile ---- */
static const char *test_net_hostile(void)
{
	const char *kind = param_str("kind", "txwrite");
	int rxread = !kstrcmp(kind, "rxread");
	const char *r = net_setup(1, !rxread);
	if (r)
		return r;
	struct vnet_pair *vp = &vnet.p[0];
	static uint8_t scratch[64] __attribute__((aligned(64)));
	const uint16_t N = VRING_DESC_F_NEXT, W = VRING_DESC_F_WRITE;
	unsigned cfg0 = irq_count(VEC_VIRTIO_CFG);

	if (!kstrcmp(kind, "txwrite") || !kstrcmp(kind, "txshort")) {
		/* An ARP request in descriptor 0 (header + frame); txwrite
		 * chains a device-writable descriptor after it, txshort cuts
		 * it to 4 bytes (shorter than the virtio-net header). */
		struct vq *q = vp->tx;
		uint8_t *b = vp->tx_mem;
		memset(b, 0, VNET_HDR_LEN + ETH_ZLEN);
		uint8_t *a = eth_header(b + VNET_HDR_LEN, bcast_mac, ETH_P_ARP);
		put16(a, 1);
		put16(a + 2, ETH_P_IP);
		a[4] = 6;
		a[5] = 4;
		put16(a + 6, 1);
		memcpy(a + 8, vnet.mac, 6);
		memcpy(a + 14, ns.ip, 4);
		memcpy(a + 24, ns.peer, 4);
		if (!kstrcmp(kind, "txshort")) {
			q->desc[0] = (struct vring_desc){ (uintptr_t)b, 4, 0, 0 };
		} else {
			q->desc[0] = (struct vring_desc){ (uintptr_t)b, VNET_HDR_LEN + ETH_ZLEN, N, 1 };
			q->desc[1] = (struct vring_desc){ (uintptr_t)scratch, sizeof(scratch), W, 0 };
		}
		vq_publish(q, 0);
		vq_kick(q, 1);
	} else if (rxread) {
		/* One device-readable receive buffer, then ask the host for a
		 * frame (our ARP request) so the device has to use it. */
		struct vq *q = vp->rx;
		q->desc[0] = (struct vring_desc){ (uintptr_t)vp->rx_mem, vnet.rx_buf_len, 0, 0 };
		vq_publish(q, 0);
		vq_kick(q, 1);
		if (send_arp(0, 1, zero_mac, ns.peer) < 0)
			return ns.fail;
	} else {
		return "unknown-kind";
	}

	unsigned limit = ms_to_ticks(param("hostile-ms", 2000));
	unsigned t0 = ticks(), needs_reset = 0;
	while (ticks() - t0 <= limit) {
		if (vdev_status(&vnet.vd) & VSTAT_NEEDS_RESET) {
			needs_reset = 1;
			break;
		}
	}
	if (needs_reset) {	/* give the config interrupt a moment */
		unsigned t1 = ticks();
		cli();
		while (irq_count(VEC_VIRTIO_CFG) == cfg0 && ticks() - t1 <= ms_to_ticks(500))
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		sti();
	}
	unsigned config_irq = irq_count(VEC_VIRTIO_CFG) != cfg0;
	kprintf("net-hostile detail config_irq=%u device_status=0x%x tx_used=%u rx_used=%u\n",
		config_irq, vdev_status(&vnet.vd), vq_pending(vp->tx), vq_pending(vp->rx));

	/* Full reset and initialisation (vnet_init resets first), then ARP. */
	unsigned recovered = 0;
	if ((r = vnet_init(&vnet, 1, 1)))
		kprintf("net-hostile reinit failed reason=%s\n", r);
	else if ((r = arp_resolve()))
		kprintf("net-hostile arp failed reason=%s\n", r);
	else
		recovered = 1;
	kprintf("net-hostile kind=%s needs_reset=%u recovered=%u\n", kind, needs_reset,
		recovered);
	if (!recovered)
		return "not-recovered";
	if (!needs_reset)
		return "no-needs-reset";
	if (!config_irq)
		return "no-config-irq";
	return NULL;
}

static const struct {
	const char *name;
	test_fn fn;
} net_tests[] = {
	{ "net-arp", test_net_arp },
	{ "net-ping", test_net_ping },
	{ "net-udp-tx", test_net_udp_tx },
	{ "net-udp-rx", test_net_udp_rx },
	{ "net-mq", test_net_mq },
	{ "net-hostile", test_net_hostile },
};

test_fn find_net_test(const char *name)
{
	for (size_t i = 0; i < sizeof(net_tests) / sizeof(net_tests[0]); i++)
		if (!kstrcmp(net_tests[i].name, name))
			return net_tests[i].fn;
	return NULL;
}
