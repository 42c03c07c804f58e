/*
 * guest-kit: a virtio-net driver (vnet.c, virtio 1.2 section 5.1) on the
 * virtio-pci transport of virtio.c, and the little IPv4 stack the net-*
 * tests use (nettests.c).
 */
#ifndef GUEST_KIT_NET_H
#define GUEST_KIT_NET_H

#include "virtio.h"

/* ---- PCI ids ---- */
#define VIRTIO_PCI_NET_MODERN    0x1041	/* 0x1040 + device type 1 */
#define VIRTIO_PCI_NET_TRANS     0x1000	/* transitional */

/* ---- feature bits (linux/virtio_net.h) ---- */
#define VIRTIO_NET_F_CSUM        0
#define VIRTIO_NET_F_GUEST_CSUM  1
#define VIRTIO_NET_F_MTU         3
#define VIRTIO_NET_F_MAC         5
#define VIRTIO_NET_F_MRG_RXBUF   15
#define VIRTIO_NET_F_STATUS      16
#define VIRTIO_NET_F_CTRL_VQ     17
#define VIRTIO_NET_F_MQ          22

/* struct virtio_net_config */
#define VNET_CFG_MAC             0	/* u8[6] */
#define VNET_CFG_STATUS          6	/* u16 */
#define VNET_CFG_MAX_PAIRS       8	/* u16 */
#define VNET_CFG_MTU             10	/* u16 */
#define VIRTIO_NET_S_LINK_UP     1

/* struct virtio_net_hdr_mrg_rxbuf: always 12 bytes with VERSION_1 */
#define VNET_HDR_LEN             12
#define VNET_HDR_NUM_BUFFERS     10	/* u16 */

/* control queue */
#define VIRTIO_NET_CTRL_MQ       4
#define VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 0
#define VIRTIO_NET_OK            0
#define VIRTIO_NET_ERR           1

/* ---- driver limits and memory ---- */
#define NET_MAX_PAIRS    4
#define NET_FRAME_MAX    1514		/* Ethernet header + 1500 (no FCS) */
#define NET_RX_POOL      (128 * 1024)	/* receive buffer bytes per RX queue */
#define NET_RX_MAXBUFS   VQ_MAX_SIZE
#define NET_TX_SLOTS     64		/* frames in flight per TX queue */
#define NET_TX_STRIDE    1536		/* header + frame, per TX slot */
#define NET_ASM_MAX      4096		/* a frame spread over MRG buffers */

struct vnet_pair {
	struct vq *rx, *tx;
	/* receive: buffer b = descriptor b, rx_stride bytes at rx_mem + b * stride */
	uint8_t *rx_mem;
	unsigned rx_bufs;		/* posted at start (0 with post=0) */
	uint16_t held[NET_RX_MAXBUFS];	/* buffers of the frame last returned */
	unsigned nheld;
	uint8_t *asm_buf;		/* frames that came in several buffers */
	/* transmit: slot s = descriptor s */
	uint8_t *tx_mem;
	unsigned tx_slots;
	uint16_t tx_free[NET_TX_SLOTS];
	unsigned tx_nfree;
	/* counters */
	uint32_t rx_frames, rx_multi, rx_dropped, tx_frames;
	uint32_t rx_empty;		/* used buffers with length 0 */
};

struct vnet {
	struct vdev vd;
	uint8_t mac[6];
	uint16_t link_status, max_pairs, mtu;
	unsigned pairs;			/* queue pairs set up */
	unsigned active;		/* pairs the device may use (VQ_PAIRS_SET) */
	int mrg;			/* VIRTIO_NET_F_MRG_RXBUF negotiated */
	unsigned rx_buf_len, rx_stride;
	struct vq *ctrl;		/* NULL without VIRTIO_NET_F_CTRL_VQ */
	struct vnet_pair p[NET_MAX_PAIRS];
};

extern struct vnet vnet;

struct rxframe {
	uint8_t *data;			/* Ethernet frame (after the virtio-net header) */
	uint32_t len;
	unsigned pair;
	unsigned nbufs;			/* receive buffers it came in */
};

/* setup: find + init (+ MQ pairs) + the info lines. post_rx = 0 leaves the
 * receive queues empty (vnet_rx_post fills them later). */
const char *vnet_open(unsigned pairs, int post_rx);
const char *vnet_init(struct vnet *n, unsigned pairs, int post_rx);
void vnet_rx_post(struct vnet *n, unsigned pair);

/* receive: 1 = *f is a frame (valid until the next vnet_rx_poll on that
 * pair), 0 = nothing complete yet; a negative value is a device error whose
 * reason is vnet_error. */
int vnet_rx_poll(struct vnet *n, unsigned pair, struct rxframe *f);
void vnet_rx_release(struct vnet *n, unsigned pair);
extern const char *vnet_error;

/* transmit: a free slot's frame area (after the header), NULL if all are in
 * flight; then vnet_tx_put (publishes) and vnet_tx_kick. */
uint8_t *vnet_tx_get(struct vnet *n, unsigned pair, unsigned *slot);
void vnet_tx_put(struct vnet *n, unsigned pair, unsigned slot, uint32_t len);
void vnet_tx_kick(struct vnet *n, unsigned pair);
int vnet_tx_reclaim(struct vnet *n, unsigned pair);	/* freed slots, <0: error */
unsigned vnet_tx_inflight(const struct vnet *n, unsigned pair);

/* nettests.c for hostile.c: one pair with the IPv4 setup, ARP resolution of
 * the peer, and one ARP request sent (<0: failed) */
const char *net_hostile_setup(int post_rx);
const char *net_hostile_arp(void);
int net_hostile_arp_request(void);

/* control queue: one command, waited for; *ack gets the device's answer */
const char *vnet_ctrl(struct vnet *n, uint8_t cls, uint8_t cmd, const void *data,
		      uint32_t len, uint8_t *ack);

/* ---- the IPv4 bits (nettests.c) ---- */
#define ETH_HLEN         14
#define ETH_P_IP         0x0800
#define ETH_P_ARP        0x0806
#define ETH_ZLEN         60		/* minimum frame without FCS */
#define IP_HLEN          20
#define UDP_HLEN         8
#define ICMP_HLEN        8
#define IPPROTO_ICMP     1
#define IPPROTO_UDP      17

#endif
