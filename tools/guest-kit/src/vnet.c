/*
 * guest-kit: virtio-net driver (virtio 1.2 section 5.1) on the virtio-pci
 * transport of virtio.c.
 *
 * Queues: receive queue of pair i = device queue 2i (driver slot 2i),
 * transmit queue = 2i + 1 (slot 2i + 1), the control queue last (device
 * queue 2 * max_virtqueue_pairs with MQ, else 2; driver slot 2 * pairs).
 * No checksum or segmentation offloads are negotiated: every frame carries
 * a zero virtio-net header on transmit and is complete on receive.
 *
 * Receive buffer b is descriptor b (one device-writable descriptor of
 * rx_buf_len bytes); transmit slot s is descriptor s (one device-readable
 * descriptor: header + frame). Nothing here is privileged, so receive and
 * transmit also work from ring 3 (run_user); vnet_init and vnet_ctrl are
 * CPL0 only.
 */
#include "net.h"

struct vnet vnet;
const char *vnet_error;

static uint8_t rx_mem[NET_MAX_PAIRS][NET_RX_POOL] __attribute__((aligned(4096)));
static uint8_t tx_mem[NET_MAX_PAIRS][NET_TX_SLOTS * NET_TX_STRIDE] __attribute__((aligned(4096)));
static uint8_t asm_mem[NET_MAX_PAIRS][NET_ASM_MAX] __attribute__((aligned(64)));
static uint8_t rx_out[NET_MAX_PAIRS][NET_RX_MAXBUFS];	/* 1: owned by the device */
static uint8_t tx_out[NET_MAX_PAIRS][NET_TX_SLOTS];

/* The control request: class, command, data (device-readable), ack. */
static struct {
	uint8_t hdr[2];
	uint8_t data[62];
	volatile uint8_t ack;
} ctrl_req __attribute__((aligned(64)));

static inline uint16_t le16(const uint8_t *p)
{
	return p[0] | p[1] << 8;
}

static const char *fail(const char *why)
{
	vnet_error = why;
	return why;
}

/* ---- receive ---- */
static uint8_t *rx_buf(const struct vnet *n, unsigned pair, unsigned b)
{
	return n->p[pair].rx_mem + b * n->rx_stride;
}

static void rx_give(struct vnet *n, unsigned pair, unsigned b)
{
	struct vnet_pair *vp = &n->p[pair];
	volatile struct vring_desc *d = &vp->rx->desc[b];

	d->addr = (uintptr_t)rx_buf(n, pair, b);
	d->len = n->rx_buf_len;
	d->flags = VRING_DESC_F_WRITE;
	d->next = 0;
	rx_out[pair][b] = 1;
	vq_publish(vp->rx, b);
}

/* Posts every receive buffer of the pair and notifies the device. */
void vnet_rx_post(struct vnet *n, unsigned pair)
{
	struct vnet_pair *vp = &n->p[pair];
	for (unsigned b = 0; b < vp->rx_bufs; b++)
		if (!rx_out[pair][b])
			rx_give(n, pair, b);
	vq_kick(vp->rx, 0);
}

/* Gives the buffers of the frame last returned back to the device. */
void vnet_rx_release(struct vnet *n, unsigned pair)
{
	struct vnet_pair *vp = &n->p[pair];
	if (!vp->nheld)
		return;
	for (unsigned i = 0; i < vp->nheld; i++)
		rx_give(n, pair, vp->held[i]);
	vp->nheld = 0;
	vq_kick(vp->rx, 0);
}

/* Takes the next used entry, checking that it names a buffer the device
 * owned and a length that fits it. */
static int rx_take(struct vnet *n, unsigned pair, uint32_t *id, uint32_t *len)
{
	struct vnet_pair *vp = &n->p[pair];

	vq_pop(vp->rx, id, len);
	if (*id >= vp->rx_bufs || !rx_out[pair][*id]) {
		fail("rx-bad-used-id");
		return -1;
	}
	rx_out[pair][*id] = 0;
	vp->held[vp->nheld++] = *id;
	if (*len > n->rx_buf_len) {
		fail("rx-used-len-too-big");
		return -1;
	}
	return 0;
}

int vnet_rx_poll(struct vnet *n, unsigned pair, struct rxframe *f)
{
	struct vnet_pair *vp = &n->p[pair];
	struct vq *q = vp->rx;

	vnet_rx_release(n, pair);
	for (;;) {
		unsigned have = vq_pending(q);
		if (!have)
			return 0;
		uint32_t id, len;
		unsigned nb = 1;
		if (n->mrg) {
			/* num_buffers is in the first buffer's header; wait
			 * until all of the frame's buffers are used. */
			vq_peek(q, 0, &id, &len);
			if (id >= vp->rx_bufs || !rx_out[pair][id]) {
				fail("rx-bad-used-id");
				return -1;
			}
			if (len == 0)
				goto empty;
			if (len < VNET_HDR_LEN) {
				fail("rx-used-len-too-short");
				return -1;
			}
			nb = le16(rx_buf(n, pair, id) + VNET_HDR_NUM_BUFFERS);
			if (!nb || nb > vp->rx_bufs) {
				fail("rx-bad-num-buffers");
				return -1;
			}
			if (have < nb)
				return 0;
		}
empty:
		if (rx_take(n, pair, &id, &len) < 0)
			return -1;
		if (len == 0) {
			/* A buffer given back unwritten (e.g. a frame that did
			 * not fit was dropped): nothing to deliver. */
			vp->rx_empty++;
			vnet_rx_release(n, pair);
			continue;
		}
		if (len < VNET_HDR_LEN) {
			fail("rx-used-len-too-short");
			return -1;
		}
		uint8_t *first = rx_buf(n, pair, id);
		f->pair = pair;
		f->nbufs = nb;
		if (nb == 1) {
			f->data = first + VNET_HDR_LEN;
			f->len = len - VNET_HDR_LEN;
			vp->rx_frames++;
			return 1;
		}
		/* Several buffers: gather them into this pair's assembly buffer. */
		uint32_t total = len - VNET_HDR_LEN;
		int fits = total <= NET_ASM_MAX;
		if (fits)
			memcpy(vp->asm_buf, first + VNET_HDR_LEN, total);
		for (unsigned k = 1; k < nb; k++) {
			if (rx_take(n, pair, &id, &len) < 0)
				return -1;
			if (fits && total + len <= NET_ASM_MAX)
				memcpy(vp->asm_buf + total, rx_buf(n, pair, id), len);
			else
				fits = 0;
			total += len;
		}
		if (!fits) {		/* larger than any frame we expect */
			vp->rx_dropped++;
			vnet_rx_release(n, pair);
			continue;
		}
		f->data = vp->asm_buf;
		f->len = total;
		vp->rx_frames++;
		vp->rx_multi++;
		return 1;
	}
}

/* ---- transmit ---- */
int vnet_tx_reclaim(struct vnet *n, unsigned pair)
{
	struct vnet_pair *vp = &n->p[pair];
	uint32_t id, len;
	int freed = 0;

	while (vq_pop(vp->tx, &id, &len)) {
		if (id >= vp->tx_slots || !tx_out[pair][id]) {
			fail("tx-bad-used-id");
			return -1;
		}
		tx_out[pair][id] = 0;
		vp->tx_free[vp->tx_nfree++] = id;
		freed++;
	}
	return freed;
}

unsigned vnet_tx_inflight(const struct vnet *n, unsigned pair)
{
	return n->p[pair].tx_slots - n->p[pair].tx_nfree;
}

uint8_t *vnet_tx_get(struct vnet *n, unsigned pair, unsigned *slot)
{
	struct vnet_pair *vp = &n->p[pair];

	if (!vp->tx_nfree && vnet_tx_reclaim(n, pair) <= 0)
		return NULL;
	unsigned s = vp->tx_free[--vp->tx_nfree];
	uint8_t *b = vp->tx_mem + s * NET_TX_STRIDE;
	memset(b, 0, VNET_HDR_LEN);	/* no offloads: flags 0, GSO_NONE */
	*slot = s;
	return b + VNET_HDR_LEN;
}

void vnet_tx_put(struct vnet *n, unsigned pair, unsigned slot, uint32_t len)
{
	struct vnet_pair *vp = &n->p[pair];
	volatile struct vring_desc *d = &vp->tx->desc[slot];

	d->addr = (uintptr_t)(vp->tx_mem + slot * NET_TX_STRIDE);
	d->len = VNET_HDR_LEN + len;
	d->flags = 0;
	d->next = 0;
	tx_out[pair][slot] = 1;
	vp->tx_frames++;
	vq_publish(vp->tx, slot);
}

void vnet_tx_kick(struct vnet *n, unsigned pair)
{
	vq_kick(n->p[pair].tx, 0);
}

/* ---- control queue ---- */
const char *vnet_ctrl(struct vnet *n, uint8_t cls, uint8_t cmd, const void *data,
		      uint32_t len, uint8_t *ack)
{
	struct vq *q = n->ctrl;
	const uint16_t N = VRING_DESC_F_NEXT;
	const char *r;

	if (!q)
		return "no-ctrl-vq";
	if (len > sizeof(ctrl_req.data))
		return "ctrl-data-too-long";
	ctrl_req.hdr[0] = cls;
	ctrl_req.hdr[1] = cmd;
	memcpy(ctrl_req.data, data, len);
	ctrl_req.ack = 0xff;
	q->desc[0] = (struct vring_desc){ (uintptr_t)ctrl_req.hdr, 2, N, 1 };
	unsigned last = 1;
	if (len) {
		q->desc[1] = (struct vring_desc){ (uintptr_t)ctrl_req.data, len, N, 2 };
		last = 2;
	}
	q->desc[last] = (struct vring_desc){ (uintptr_t)&ctrl_req.ack, 1,
					      VRING_DESC_F_WRITE, 0 };
	vq_arm(q);
	vq_publish(q, 0);
	vq_kick(q, 0);
	if ((r = vq_wait(q)))
		return r;
	uint32_t id, ulen;
	vq_pop(q, &id, &ulen);
	if (id != 0)
		return "ctrl-bad-used-id";
	*ack = ctrl_req.ack;
	return NULL;
}

/* ---- setup ---- */
static void read_config(struct vnet *n)
{
	struct vdev *d = &n->vd;
	uintptr_t cfg = d->devcfg;
	uint8_t gen;

	do {
		gen = vdev_cfg_generation(d);
		if (vdev_has(d, VIRTIO_NET_F_MAC)) {
			for (unsigned i = 0; i < 6; i++)
				n->mac[i] = MMIO(uint8_t, cfg + VNET_CFG_MAC + i);
		} else {	/* spec 5.1.5: the driver picks one */
			static const uint8_t local[6] = { 0x02, 0x00, 0x00, 0x67, 0x6b, 0x01 };
			memcpy(n->mac, local, 6);
		}
		n->link_status = vdev_has(d, VIRTIO_NET_F_STATUS) ?
				 MMIO(uint16_t, cfg + VNET_CFG_STATUS) : VIRTIO_NET_S_LINK_UP;
		n->max_pairs = vdev_has(d, VIRTIO_NET_F_MQ) ?
			       MMIO(uint16_t, cfg + VNET_CFG_MAX_PAIRS) : 1;
	} while (gen != vdev_cfg_generation(d));
}

/*
 * Spec 3.1.1 and 5.1.5: negotiate, read the config, set up the queues,
 * fill the receive queues (post_rx), DRIVER_OK, notify the receive queues,
 * and with pairs > 1 VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET. Parameters: mrg,
 * event-idx, qsize (256), rx-buf (1548).
 */
const char *vnet_init(struct vnet *n, unsigned pairs, int post_rx)
{
	struct vdev *d = &n->vd;
	const char *r;

	vnet_error = NULL;
	if (!pairs || pairs > NET_MAX_PAIRS)
		return "bad-pairs";
	uint64_t want = FEAT(VIRTIO_NET_F_MAC) | FEAT(VIRTIO_NET_F_STATUS) |
			FEAT(VIRTIO_NET_F_CTRL_VQ);
	if (param("mrg", 1))
		want |= FEAT(VIRTIO_NET_F_MRG_RXBUF);
	if (pairs > 1)
		want |= FEAT(VIRTIO_NET_F_MQ);
	if (param("event-idx", 1))
		want |= FEAT(VIRTIO_F_EVENT_IDX);
	if ((r = vdev_negotiate(d, want)))
		return r;
	n->mrg = vdev_has(d, VIRTIO_NET_F_MRG_RXBUF);
	read_config(n);
	if (pairs > 1 && !(vdev_has(d, VIRTIO_NET_F_MQ) && vdev_has(d, VIRTIO_NET_F_CTRL_VQ)))
		return vdev_fail(d, "no-mq");
	if (pairs > n->max_pairs)
		return vdev_fail(d, "not-enough-pairs");

	uint64_t rxlen = param("rx-buf", 1548);
	if (rxlen < 16 || rxlen > NET_RX_POOL / 4)
		return vdev_fail(d, "bad-rx-buf");
	n->rx_buf_len = rxlen;
	n->rx_stride = (rxlen + 15) & ~15u;

	/* Queue slots: RX/TX of each pair, then the control queue. */
	unsigned index[VQ_MAX], nq = 2 * pairs;
	for (unsigned k = 0; k < nq; k++)
		index[k] = k;
	int has_ctrl = vdev_has(d, VIRTIO_NET_F_CTRL_VQ);
	if (has_ctrl)
		index[nq++] = vdev_has(d, VIRTIO_NET_F_MQ) ? 2u * n->max_pairs : 2u;
	d->qsize_param = param("qsize", 256);
	if ((r = vdev_setup_queues(d, index, nq)))
		return r;
	n->ctrl = has_ctrl ? &d->q[2 * pairs] : NULL;
	n->pairs = pairs;
	n->active = 1;

	for (unsigned i = 0; i < pairs; i++) {
		struct vnet_pair *vp = &n->p[i];
		memset(vp, 0, sizeof(*vp));
		vp->rx = &d->q[2 * i];
		vp->tx = &d->q[2 * i + 1];
		vp->rx_mem = rx_mem[i];
		vp->tx_mem = tx_mem[i];
		vp->asm_buf = asm_mem[i];
		vp->rx_bufs = NET_RX_POOL / n->rx_stride;
		if (vp->rx_bufs > vp->rx->size)
			vp->rx_bufs = vp->rx->size;
		vp->tx_slots = vp->tx->size < NET_TX_SLOTS ? vp->tx->size : NET_TX_SLOTS;
		memset(rx_out[i], 0, sizeof(rx_out[i]));
		memset(tx_out[i], 0, sizeof(tx_out[i]));
		for (unsigned s = 0; s < vp->tx_slots; s++)
			vp->tx_free[s] = vp->tx_slots - 1 - s;
		vp->tx_nfree = vp->tx_slots;
		/* Transmit completions are reclaimed when slots run out; a
		 * wait for them arms the queue (vq_arm). */
		vq_set_interrupts(vp->tx, 0);
		if (post_rx)
			for (unsigned b = 0; b < vp->rx_bufs; b++)
				rx_give(n, i, b);
	}
	vdev_driver_ok(d);
	if (post_rx)
		for (unsigned i = 0; i < pairs; i++)
			vq_kick(n->p[i].rx, 0);

	if (pairs > 1) {
		uint8_t data[2] = { (uint8_t)pairs, (uint8_t)(pairs >> 8) }, ack;
		if ((r = vnet_ctrl(n, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
				   data, 2, &ack)))
			return r;
		if (ack != VIRTIO_NET_OK) {
			kprintf("net: ctrl class=%u cmd=%u ack=%u\n", VIRTIO_NET_CTRL_MQ,
				VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, ack);
			return "mq-pairs-set-rejected";
		}
		n->active = pairs;
	}
	return NULL;
}

static const char *vnet_find(struct vnet *n)
{
	n->vd.tag = "net";
	return vdev_find(&n->vd, VIRTIO_PCI_NET_MODERN, VIRTIO_PCI_NET_TRANS,
			 "no-virtio-net");
}

const char *vnet_open(unsigned pairs, int post_rx)
{
	struct vnet *n = &vnet;
	struct vdev *d = &n->vd;
	const char *r;

	virtio_irq_setup();
	if ((r = vnet_find(n)))
		return r;
	if ((r = vnet_init(n, pairs, post_rx)))
		return r;
	kprintf("net: pci=00:%02x.%x device=0x%04x msix_vectors=%u queue_size=%u dev_features=0x%llx\n",
		d->dev, d->fn, d->device_id, d->msix_size, n->p[0].rx->size,
		(unsigned long long)d->dev_features);
	kprintf("net: mac=%02x:%02x:%02x:%02x:%02x:%02x link=%s features=0x%llx pairs=%u max_pairs=%u mrg=%u rx_buf=%u rx_bufs=%u ctrl=%u\n",
		n->mac[0], n->mac[1], n->mac[2], n->mac[3], n->mac[4], n->mac[5],
		n->link_status & VIRTIO_NET_S_LINK_UP ? "up" : "down",
		(unsigned long long)d->drv_features, n->pairs, n->max_pairs, n->mrg,
		n->rx_buf_len, n->p[0].rx_bufs, n->ctrl != NULL);
	return NULL;
}
