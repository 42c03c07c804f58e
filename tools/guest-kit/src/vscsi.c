/*
 * guest-kit: virtio-scsi driver (virtio 1.2 section 5.6) on the virtio-pci
 * transport of virtio.c.
 *
 * Queues: device queue 0 = controlq (driver slot 0), 1 = eventq (slot 1),
 * 2 + i = request queue i (slot 2 + i). Slot k uses MSI-X entry 1 + k and
 * IDT vector 0x50 + k, entry 0 / vector 0x4f is the config vector.
 *
 * Requests are direct descriptor chains (no INDIRECT_DESC): the driver keeps
 * a free list of descriptors per queue and takes as many as a request needs
 * (request header, data-out buffers, response, data-in buffers), so any mix
 * of chain lengths can be in flight. Each request owns a context
 * (struct scsi_ctx: the device-visible request and response headers plus
 * bookkeeping) from a pool shared by all queues; the used element's id is the
 * chain head, which maps back to the context.
 *
 * Event buffer b on the eventq is descriptor b (one device-writable
 * descriptor of sizeof(struct virtio_scsi_event)).
 *
 * Nothing but scsi_wait / the init path is privileged, so submit + reap also
 * run in ring 3 (the scsi-bench loop).
 */
#include "scsi.h"

struct vscsi vscsi;

static struct scsi_ctx ctx_pool[SCSI_CTX_MAX];
static uint8_t ctx_used[SCSI_CTX_MAX];
static struct virtio_scsi_event ev_buf[SCSI_EVENT_BUFS] __attribute__((aligned(64)));

/* Descriptor free lists per driver slot (the chain of a request keeps its
 * free_next links, so it goes back to the list in one splice). */
static uint16_t free_next[VQ_MAX][VQ_MAX_SIZE];
static uint16_t free_head[VQ_MAX], nfree[VQ_MAX];
static uint8_t head_ctx[VQ_MAX][VQ_MAX_SIZE];	/* context + 1, 0 = none */

static inline uint8_t r8(uintptr_t a) { return MMIO(uint8_t, a); }
static inline uint16_t r16(uintptr_t a) { return MMIO(uint16_t, a); }
static inline uint32_t r32(uintptr_t a) { return MMIO(uint32_t, a); }
static inline void w32(uintptr_t a, uint32_t v) { MMIO(uint32_t, a) = v; }

/* ---- contexts ---- */
int scsi_ctx_alloc(struct vscsi *s)
{
	(void)s;
	for (int i = 0; i < SCSI_CTX_MAX; i++) {
		if (!ctx_used[i]) {
			ctx_used[i] = 1;
			struct scsi_ctx *c = &ctx_pool[i];
			c->busy = 0;
			c->done = 0;
			c->used_len = 0;
			return i;
		}
	}
	return -1;
}

void scsi_ctx_free(int ctx)
{
	if (ctx >= 0 && ctx < SCSI_CTX_MAX)
		ctx_used[ctx] = 0;
}

struct scsi_ctx *scsi_ctx(int ctx)
{
	return &ctx_pool[ctx];
}

static void desc_init(unsigned slot, unsigned size)
{
	for (unsigned i = 0; i < size; i++) {
		free_next[slot][i] = (uint16_t)(i + 1);
		head_ctx[slot][i] = 0;
	}
	free_head[slot] = 0;
	nfree[slot] = (uint16_t)size;
}

unsigned scsi_free_descs(unsigned qslot)
{
	return nfree[qslot];
}

/* Builds a chain of n buffers (in the given order) for context ctx on queue
 * slot qslot and, if publish, puts its head on the avail ring (no notify).
 * Returns the head, or -1 if the queue lacks free descriptors. */
int scsi_chain(struct vscsi *s, unsigned qslot, int ctx, const struct vbuf *bufs,
	       unsigned n, int publish)
{
	struct vq *q = &s->vd.q[qslot];
	if (!n || n > nfree[qslot] || ctx < 0 || ctx >= SCSI_CTX_MAX)
		return -1;
	uint16_t head = free_head[qslot], d = head, last = head;
	for (unsigned k = 0; k < n; k++) {
		uint16_t nx = free_next[qslot][d];
		volatile struct vring_desc *e = &q->desc[d];
		e->addr = bufs[k].addr;
		e->len = bufs[k].len;
		e->flags = (bufs[k].write ? VRING_DESC_F_WRITE : 0) |
			   (k + 1 < n ? VRING_DESC_F_NEXT : 0);
		e->next = k + 1 < n ? nx : 0;
		last = d;
		d = nx;
	}
	(void)last;
	free_head[qslot] = d;
	nfree[qslot] -= n;

	struct scsi_ctx *c = &ctx_pool[ctx];
	c->head = head;
	c->ndesc = n;
	c->qslot = qslot;
	c->busy = 1;
	c->done = 0;
	head_ctx[qslot][head] = (uint8_t)(ctx + 1);
	if (publish)
		vq_publish(q, head);
	return head;
}

static void chain_release(unsigned qslot, struct scsi_ctx *c)
{
	uint16_t last = c->head;
	for (unsigned k = 1; k < c->ndesc; k++)
		last = free_next[qslot][last];
	free_next[qslot][last] = free_head[qslot];
	free_head[qslot] = c->head;
	nfree[qslot] += c->ndesc;
	head_ctx[qslot][c->head] = 0;
}

int scsi_reap(struct vscsi *s, unsigned qslot)
{
	struct vq *q = &s->vd.q[qslot];
	uint32_t id, len;
	int n = 0;

	while (vq_pop(q, &id, &len)) {
		if (id >= q->size || !head_ctx[qslot][id])
			return -1;
		struct scsi_ctx *c = &ctx_pool[head_ctx[qslot][id] - 1];
		if (!c->busy || c->qslot != qslot)
			return -1;
		chain_release(qslot, c);
		c->used_len = len;
		c->busy = 0;
		barrier();
		c->done = 1;
		n++;
	}
	return n;
}

/* ---- requests ---- */
void scsi_lun_bytes(const struct vscsi *s, unsigned lun, uint8_t out[8])
{
	memset(out, 0, 8);
	out[0] = 1;
	out[1] = (uint8_t)s->target;
	out[2] = (uint8_t)((lun >> 8) | 0x40);	/* flat space addressing */
	out[3] = (uint8_t)lun;
}

int scsi_submit(struct vscsi *s, unsigned rq, const struct scsi_cmd *cmd)
{
	if (rq >= s->nreq || cmd->cdb_len > VIRTIO_SCSI_CDB_SIZE ||
	    cmd->nbufs > SCSI_MAX_BUFS)
		return -1;
	int ctx = scsi_ctx_alloc(s);
	if (ctx < 0)
		return -1;
	struct scsi_ctx *c = &ctx_pool[ctx];
	struct virtio_scsi_cmd_req *r = &c->req.cmd;

	memset(c->req.raw, 0, sizeof(c->req.raw));
	scsi_lun_bytes(s, cmd->lun, r->lun);
	r->tag = ++s->next_tag;
	c->tag = r->tag;
	r->task_attr = VIRTIO_SCSI_S_SIMPLE;
	memcpy(r->cdb, cmd->cdb, cmd->cdb_len);
	memset(c->resp.raw, 0, sizeof(c->resp.raw));
	c->resp.cmd.response = 0xff;		/* "not written" markers */
	c->resp.cmd.status = 0xff;

	/* request, data-out..., response, data-in... */
	struct vbuf b[SCSI_MAX_BUFS + 2];
	unsigned n = 0;
	b[n++] = (struct vbuf){ (uintptr_t)r, sizeof(*r), 0 };
	for (unsigned k = 0; k < cmd->nbufs; k++)
		if (!cmd->bufs[k].write)
			b[n++] = cmd->bufs[k];
	b[n++] = (struct vbuf){ (uintptr_t)&c->resp.cmd, sizeof(c->resp.cmd), 1 };
	for (unsigned k = 0; k < cmd->nbufs; k++)
		if (cmd->bufs[k].write)
			b[n++] = cmd->bufs[k];
	if (scsi_chain(s, 2 + rq, ctx, b, n, 1) < 0) {
		scsi_ctx_free(ctx);
		return -1;
	}
	return ctx;
}

/* Waits until context ctx is done: halts for the queue's interrupt (see
 * vq_wait), or with poll=1 spins on the used index (bounded by timeout-ms). */
const char *scsi_wait(struct vscsi *s, int ctx)
{
	struct scsi_ctx *c = &ctx_pool[ctx];
	struct vq *q = &s->vd.q[c->qslot];
	unsigned t0 = ticks(), limit = ms_to_ticks(param("timeout-ms", 10000));

	for (;;) {
		if (scsi_reap(s, c->qslot) < 0)
			return "bad-used-id";
		if (c->done)
			return NULL;
		if (s->poll) {
			if (ticks() - t0 > limit) {
				kprintf("%s: timeout queue=%u used_advanced=0 interrupts=%u\n",
					q->tag, q->index, 0u);
				return vq_timeout_reason(q);
			}
			continue;
		}
		const char *r = vq_wait(q);
		if (r)
			return r;
	}
}

void scsi_decode_sense(struct scsi_res *r)
{
	unsigned n = r->sense_len < VIRTIO_SCSI_SENSE_SIZE ? r->sense_len : VIRTIO_SCSI_SENSE_SIZE;
	const uint8_t *p = r->sense;
	r->sense_code = 0;
	r->key = r->asc = r->ascq = 0;
	if (n < 1)
		return;
	r->sense_code = p[0] & 0x7f;
	if (r->sense_code == 0x70 || r->sense_code == 0x71) {
		r->key = n > 2 ? p[2] & 0xf : 0;
		r->asc = n > 12 ? p[12] : 0;
		r->ascq = n > 13 ? p[13] : 0;
	} else if (r->sense_code == 0x72 || r->sense_code == 0x73) {
		r->key = n > 1 ? p[1] & 0xf : 0;
		r->asc = n > 2 ? p[2] : 0;
		r->ascq = n > 3 ? p[3] : 0;
	}
}

void scsi_result(int ctx, struct scsi_res *res)
{
	struct scsi_ctx *c = &ctx_pool[ctx];
	const struct virtio_scsi_cmd_resp *p = &c->resp.cmd;
	res->response = p->response;
	res->status = p->status;
	res->sense_len = p->sense_len;
	res->resid = p->resid;
	res->used_len = c->used_len;
	memcpy(res->sense, (const void *)p->sense, sizeof(res->sense));
	scsi_decode_sense(res);
	scsi_ctx_free(ctx);
}

const char *scsi_exec_q(struct vscsi *s, unsigned rq, const struct scsi_cmd *c,
			struct scsi_res *res)
{
	struct vq *q = vscsi_reqq(s, rq);
	if (!s->poll)
		vq_arm(q);
	int ctx = scsi_submit(s, rq, c);
	if (ctx < 0)
		return "submit-failed";
	vq_kick(q, 0);
	const char *r = scsi_wait(s, ctx);
	if (r)
		return r;
	scsi_result(ctx, res);
	return NULL;
}

const char *scsi_exec(struct vscsi *s, const struct scsi_cmd *c, struct scsi_res *res)
{
	return scsi_exec_q(s, 0, c, res);
}

static int is_ua(const struct scsi_res *r)
{
	return r->response == VIRTIO_SCSI_S_OK && r->status == SAM_STAT_CHECK_CONDITION &&
	       r->key == SENSE_UNIT_ATTENTION;
}

const char *scsi_exec_ua(struct vscsi *s, const struct scsi_cmd *c, struct scsi_res *res)
{
	const char *r = scsi_exec(s, c, res);
	if (r || !is_ua(res))
		return r;
	kprintf("scsi-ua lun=%u asc=0x%02x ascq=0x%02x\n", c->lun, res->asc, res->ascq);
	return scsi_exec(s, c, res);
}

/* ---- control queue ---- */
int scsi_tmf_submit(struct vscsi *s, uint32_t subtype, unsigned lun, uint64_t tag)
{
	int ctx = scsi_ctx_alloc(s);
	if (ctx < 0)
		return -1;
	struct scsi_ctx *c = &ctx_pool[ctx];
	memset(c->req.raw, 0, sizeof(c->req.raw));
	memset(c->resp.raw, 0, sizeof(c->resp.raw));
	c->req.tmf.type = VIRTIO_SCSI_T_TMF;
	c->req.tmf.subtype = subtype;
	scsi_lun_bytes(s, lun, c->req.tmf.lun);
	c->req.tmf.tag = tag;
	c->resp.tmf.response = 0xff;
	struct vbuf b[2] = {
		{ (uintptr_t)&c->req.tmf, sizeof(c->req.tmf), 0 },
		{ (uintptr_t)&c->resp.tmf, sizeof(c->resp.tmf), 1 },
	};
	if (scsi_chain(s, 0, ctx, b, 2, 1) < 0) {
		scsi_ctx_free(ctx);
		return -1;
	}
	return ctx;
}

const char *scsi_tmf(struct vscsi *s, uint32_t subtype, unsigned lun, uint64_t tag,
		     uint8_t *response)
{
	struct vq *q = vscsi_ctrlq(s);
	if (!s->poll)
		vq_arm(q);
	int ctx = scsi_tmf_submit(s, subtype, lun, tag);
	if (ctx < 0)
		return "submit-failed";
	vq_kick(q, 0);
	const char *r = scsi_wait(s, ctx);
	if (r)
		return r;
	*response = ctx_pool[ctx].resp.tmf.response;
	scsi_ctx_free(ctx);
	return NULL;
}

const char *scsi_an_query(struct vscsi *s, unsigned lun, uint32_t events,
			  uint8_t *response, uint32_t *actual)
{
	struct vq *q = vscsi_ctrlq(s);
	int ctx = scsi_ctx_alloc(s);
	if (ctx < 0)
		return "submit-failed";
	struct scsi_ctx *c = &ctx_pool[ctx];
	memset(c->req.raw, 0, sizeof(c->req.raw));
	memset(c->resp.raw, 0, sizeof(c->resp.raw));
	c->req.an.type = VIRTIO_SCSI_T_AN_QUERY;
	scsi_lun_bytes(s, lun, c->req.an.lun);
	c->req.an.event_requested = events;
	c->resp.an.response = 0xff;
	struct vbuf b[2] = {
		{ (uintptr_t)&c->req.an, sizeof(c->req.an), 0 },
		{ (uintptr_t)&c->resp.an, sizeof(c->resp.an), 1 },
	};
	if (!s->poll)
		vq_arm(q);
	if (scsi_chain(s, 0, ctx, b, 2, 1) < 0) {
		scsi_ctx_free(ctx);
		return "submit-failed";
	}
	vq_kick(q, 0);
	const char *r = scsi_wait(s, ctx);
	if (r)
		return r;
	*response = c->resp.an.response;
	*actual = c->resp.an.event_actual;
	scsi_ctx_free(ctx);
	return NULL;
}

/* ---- event queue ---- */
static void event_give(struct vscsi *s, unsigned b)
{
	struct vq *q = vscsi_eventq(s);
	volatile struct vring_desc *d = &q->desc[b];
	memset(&ev_buf[b], 0, sizeof(ev_buf[b]));
	d->addr = (uintptr_t)&ev_buf[b];
	d->len = sizeof(ev_buf[b]);
	d->flags = VRING_DESC_F_WRITE;
	d->next = 0;
	vq_publish(q, b);
}

/* Prints and reposts the events the device returned; returns how many. */
unsigned vscsi_events(struct vscsi *s)
{
	struct vq *q = vscsi_eventq(s);
	uint32_t id, len;
	unsigned n = 0;
	while (vq_pop(q, &id, &len)) {
		if (id >= SCSI_EVENT_BUFS) {
			kprintf("scsi-event bad-id=%u\n", id);
			continue;
		}
		const struct virtio_scsi_event *e = &ev_buf[id];
		kprintf("scsi-event event=0x%x lun=%02x%02x%02x%02x reason=%u len=%u\n",
			e->event, e->lun[0], e->lun[1], e->lun[2], e->lun[3],
			e->reason, len);
		event_give(s, id);
		n++;
	}
	if (n)
		vq_kick(q, 0);
	return n;
}

/* ---- setup ---- */
const char *vscsi_find(struct vscsi *s)
{
	s->vd.tag = "scsi";
	return vdev_find(&s->vd, VIRTIO_PCI_SCSI_MODERN, VIRTIO_PCI_SCSI_TRANS,
			 "no-virtio-scsi");
}

static void read_config(struct vscsi *s)
{
	uintptr_t cfg = s->vd.devcfg;
	uint8_t gen;
	do {
		gen = vdev_cfg_generation(&s->vd);
		s->num_queues = r32(cfg + VSCSI_CFG_NUM_QUEUES);
		s->seg_max = r32(cfg + VSCSI_CFG_SEG_MAX);
		s->max_sectors = r32(cfg + VSCSI_CFG_MAX_SECTORS);
		s->cmd_per_lun = r32(cfg + VSCSI_CFG_CMD_PER_LUN);
		s->event_info_size = r32(cfg + VSCSI_CFG_EVENT_INFO);
		s->sense_size = r32(cfg + VSCSI_CFG_SENSE_SIZE);
		s->cdb_size = r32(cfg + VSCSI_CFG_CDB_SIZE);
		s->max_channel = r16(cfg + VSCSI_CFG_MAX_CHANNEL);
		s->max_target = r16(cfg + VSCSI_CFG_MAX_TARGET);
		s->max_lun = r32(cfg + VSCSI_CFG_MAX_LUN);
	} while (gen != vdev_cfg_generation(&s->vd));
}

/* Spec 3.1.1 + 5.6.5: reset .. FEATURES_OK, config, sense/cdb sizes, queues
 * (controlq, eventq, request queues), event buffers, DRIVER_OK. */
const char *vscsi_init(struct vscsi *s)
{
	struct vdev *d = &s->vd;
	const char *r;
	uint64_t want = 0;

	if (param("event-idx", 1))
		want |= FEAT(VIRTIO_F_EVENT_IDX);
	if ((r = vdev_negotiate(d, want)))
		return r;
	read_config(s);

	/* Our request/response layouts use the default sizes: write them. */
	w32(d->devcfg + VSCSI_CFG_SENSE_SIZE, VIRTIO_SCSI_SENSE_SIZE);
	w32(d->devcfg + VSCSI_CFG_CDB_SIZE, VIRTIO_SCSI_CDB_SIZE);
	s->sense_size_set = r32(d->devcfg + VSCSI_CFG_SENSE_SIZE);
	s->cdb_size_set = r32(d->devcfg + VSCSI_CFG_CDB_SIZE);
	if (s->sense_size_set != VIRTIO_SCSI_SENSE_SIZE || s->cdb_size_set != VIRTIO_SCSI_CDB_SIZE)
		return vdev_fail(d, "sense-cdb-size-not-accepted");

	unsigned devq = r16(d->common + VCOMMON_NUMQ);
	if (devq < 3)
		return vdev_fail(d, "no-request-queues");
	unsigned nreq = s->num_queues;
	if (nreq > devq - 2)
		nreq = devq - 2;
	if (nreq > SCSI_MAX_REQQ)
		nreq = SCSI_MAX_REQQ;
	uint64_t want_q = param("queues", 0);
	if (want_q && want_q < nreq)
		nreq = want_q;
	if (!nreq)
		return vdev_fail(d, "no-request-queues");
	s->target = param("target", 0);
	s->poll = param("poll", 0) != 0;
	d->qsize_param = param("qsize", 256);

	unsigned index[VQ_MAX];
	for (unsigned i = 0; i < 2 + nreq; i++)
		index[i] = i;
	if ((r = vdev_setup_queues(d, index, 2 + nreq)))
		return r;
	s->nreq = nreq;
	for (unsigned k = 0; k < 2 + nreq; k++)
		desc_init(k, d->q[k].size);
	memset(ctx_used, 0, sizeof(ctx_used));

	unsigned nev = SCSI_EVENT_BUFS < d->q[1].size ? SCSI_EVENT_BUFS : d->q[1].size;
	for (unsigned b = 0; b < nev; b++)
		event_give(s, b);
	s->events_posted = nev;
	vdev_driver_ok(d);
	vq_kick(vscsi_eventq(s), 1);
	return NULL;
}

const char *vscsi_open(void)
{
	struct vscsi *s = &vscsi;
	struct vdev *d = &s->vd;
	const char *r;

	virtio_irq_setup();
	if ((r = vscsi_find(s)))
		return r;
	if ((r = vscsi_init(s)))
		return r;
	kprintf("scsi: pci=00:%02x.%x device=0x%04x msix_vectors=%u queue_size=%u dev_features=0x%llx\n",
		d->dev, d->fn, d->device_id, d->msix_size, d->q[2].size,
		(unsigned long long)d->dev_features);
	kprintf("scsi: num_queues=%u seg_max=%u max_sectors=%u cmd_per_lun=%u event_info_size=%u sense_size=%u cdb_size=%u max_channel=%u max_target=%u max_lun=%u features=0x%llx req_queues=%u\n",
		s->num_queues, s->seg_max, s->max_sectors, s->cmd_per_lun,
		s->event_info_size, s->sense_size, s->cdb_size, s->max_channel,
		s->max_target, s->max_lun, (unsigned long long)d->drv_features, s->nreq);
	return NULL;
}
