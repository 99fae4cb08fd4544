// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_relay: relay channels whose buffers live in the shared region, so the host
 * reads probe records where the guest wrote them (shared-abi/PROTOCOL.md, "Relay
 * channels (Probe Listener)").
 *
 * Per channel (all in data-area pages from the frontend's page allocator):
 *   control area  n_cpus x vesper_relay_buf_control, then n_cpus x n_subbufs x u32
 *                 padding words                        granted READ
 *   consumer area n_cpus x vesper_relay_consumer       granted READ|WRITE (host writes)
 *   one buffer per CPU, n_subbufs x subbuf_size bytes  granted READ
 *
 * Life cycle (all state changes under vr_lock):
 *   QUEUED_OPEN  pages allocated by the opener, waiting for the worker
 *   OPENING      worker granted everything and posted REQ_RELAY_OPEN
 *   OPEN         host answered 0; writers write while `connected`
 *   QUEUED_CLOSE closer stopped the writers, waiting for the worker
 *   CLOSING      worker posted REQ_RELAY_CLOSE
 *   DONE         grants revoked, pages freed (open refused, or closed)
 *   DISCONNECTED the frontend unbound; the region (and its pages) went with it
 * A caller that gives up waiting (10 s) marks the channel `abandoned`; the worker (or
 * the unbind) then finishes it and frees it.
 *
 * Writers never take a lock: each CPU writes its own buffer with interrupts off, and
 * closers/unbind clear `connected` and synchronize_rcu() (which waits for every
 * interrupts-off section) before the region or the channel may go away.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/mutex.h>
#include <linux/list.h>
#include <linux/completion.h>
#include <linux/rcupdate.h>
#include <linux/cpumask.h>
#include <linux/smp.h>
#include <linux/irqflags.h>
#include <linux/hardirq.h>
#include <linux/timekeeping.h>
#include <linux/kprobes.h>
#include <linux/io.h>
#include <linux/err.h>
#include <linux/string.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <asm/local64.h>

#include "vesper_abi.h"
#include "vesper_relay_api.h"
#include "vesper_relay.h"
#include "vesper_transport.h"

#define VR_NAME "vesper_front"
/* How long open/close wait for the host's answer. */
#define VR_TIMEOUT (10 * HZ)

static_assert(sizeof(struct vesper_relay_open_request) <= VESPER_SLOT_PAYLOAD_SIZE);
static_assert(sizeof(struct vesper_record_header) == 24);

enum vr_state {
	VR_QUEUED_OPEN,
	VR_OPENING,
	VR_OPEN,
	VR_QUEUED_CLOSE,
	VR_CLOSING,
	VR_DONE,
	VR_DISCONNECTED,
};

/* Private writer state of one CPU buffer; touched only by that CPU, interrupts off. */
struct vr_cpu {
	u32 produced;		/* P: sub-buffers produced (free-running) */
	u32 committed;		/* C: bytes committed in sub-buffer P % n_subbufs */
	u64 seq;
	u64 written;
	local64_t dropped;	/* also bumped from NMI context */
} ____cacheline_aligned;

struct vesper_relay {
	/* Writer side: set before `connected` becomes true, constant afterwards. */
	bool connected;
	u32 subbuf_size;
	u32 n_subbufs;
	u32 n_cpus;
	u32 flags;
	struct vesper_relay_buf_control *ctrl;
	u32 *padding;
	struct vesper_relay_consumer *cons;
	void __iomem *doorbell;
	struct vr_cpu *cpu;
	void *buf[VESPER_RELAY_MAX_CPUS];

	/* Below: under vr_lock. */
	struct list_head node;
	struct vesper_front *fe;	/* NULL once disconnected */
	enum vr_state state;
	bool abandoned;
	bool has_pages;
	int result;
	u32 id;
	u64 req_id;
	struct completion done;
	char module[VESPER_RELAY_NAME_LEN];
	char name[VESPER_RELAY_NAME_LEN];

	u32 ctrl_len, cons_len, buf_len;
	u64 ctrl_off, cons_off;
	u64 buf_off[VESPER_RELAY_MAX_CPUS];
	u32 ctrl_grant, cons_grant;
	u32 buf_grant[VESPER_RELAY_MAX_CPUS];
};

static DEFINE_MUTEX(vr_lock);
static LIST_HEAD(vr_channels);
static struct vesper_front *vr_fe;	/* the frontend new channels open on */
static u32 vr_next_id;

static unsigned int vr_pages(u32 len)
{
	return DIV_ROUND_UP(len, VESPER_PAGE_SIZE);
}

static void vr_free(struct vesper_relay *r)
{
	kfree(r->cpu);
	kfree(r);
}

/* ---- region resources (vr_lock held, r->fe valid) ------------------------------- */

static void vr_free_pages(struct vesper_relay *r)
{
	u32 cpu;

	if (!r->has_pages)
		return;
	vf_pages_free(r->fe, r->ctrl_off, vr_pages(r->ctrl_len));
	vf_pages_free(r->fe, r->cons_off, vr_pages(r->cons_len));
	for (cpu = 0; cpu < r->n_cpus; cpu++)
		vf_pages_free(r->fe, r->buf_off[cpu], vr_pages(r->buf_len));
	r->has_pages = false;
}

static int vr_alloc_pages(struct vesper_relay *r)
{
	struct vesper_front *fe = r->fe;
	u32 cpu;
	int ret;

	ret = vf_pages_alloc(fe, vr_pages(r->ctrl_len), &r->ctrl_off);
	if (ret)
		return ret;
	ret = vf_pages_alloc(fe, vr_pages(r->cons_len), &r->cons_off);
	if (ret)
		goto err_ctrl;
	for (cpu = 0; cpu < r->n_cpus; cpu++) {
		ret = vf_pages_alloc(fe, vr_pages(r->buf_len), &r->buf_off[cpu]);
		if (ret)
			goto err_bufs;
	}
	r->has_pages = true;
	return 0;

err_bufs:
	while (cpu--)
		vf_pages_free(fe, r->buf_off[cpu], vr_pages(r->buf_len));
	vf_pages_free(fe, r->cons_off, vr_pages(r->cons_len));
err_ctrl:
	vf_pages_free(fe, r->ctrl_off, vr_pages(r->ctrl_len));
	return ret;
}

/* Worker: revoke every live grant of r. */
static void vr_revoke_all(struct vesper_relay *r)
{
	u32 cpu;

	if (r->ctrl_grant != VESPER_GRANT_REF_NONE)
		vf_revoke(r->fe, r->ctrl_grant);
	if (r->cons_grant != VESPER_GRANT_REF_NONE)
		vf_revoke(r->fe, r->cons_grant);
	r->ctrl_grant = r->cons_grant = VESPER_GRANT_REF_NONE;
	for (cpu = 0; cpu < VESPER_RELAY_MAX_CPUS; cpu++) {
		if (r->buf_grant[cpu] != VESPER_GRANT_REF_NONE)
			vf_revoke(r->fe, r->buf_grant[cpu]);
		r->buf_grant[cpu] = VESPER_GRANT_REF_NONE;
	}
}

/* Worker: the channel no longer needs the region (open refused, or closed). */
static void vr_finish(struct vesper_relay *r, int result)
{
	vr_revoke_all(r);
	vr_free_pages(r);
	r->state = VR_DONE;
	r->result = result;
	if (r->abandoned) {
		list_del(&r->node);
		vr_free(r);
	} else {
		complete(&r->done);
	}
}

static int vr_grant_all(struct vesper_relay *r)
{
	const u32 rd = VESPER_GRANT_READ, own = VESPER_GRANT_OWNER_RELAY;
	struct vesper_front *fe = r->fe;
	int ref;
	u32 cpu;

	ref = vf_grant(fe, r->ctrl_off, r->ctrl_len, rd, own);
	if (ref < 0)
		return ref;
	r->ctrl_grant = ref;
	/* The consumer area is zero when the host first sees it. */
	memset(r->cons, 0, r->cons_len);
	smp_wmb();
	ref = vf_grant(fe, r->cons_off, r->cons_len, rd | VESPER_GRANT_WRITE, own);
	if (ref < 0)
		return ref;
	r->cons_grant = ref;
	for (cpu = 0; cpu < r->n_cpus; cpu++) {
		ref = vf_grant(fe, r->buf_off[cpu], r->buf_len, rd, own);
		if (ref < 0)
			return ref;
		r->buf_grant[cpu] = ref;
	}
	return 0;
}

/* ---- worker side ------------------------------------------------------------------- */

static void vr_post_open(struct vesper_front *fe, struct vesper_relay *r)
{
	struct vesper_relay_open_request *req;
	u32 cpu;
	int ret;

	req = kzalloc(sizeof(*req), GFP_KERNEL);
	if (!req)
		return vr_finish(r, -ENOMEM);
	ret = vr_grant_all(r);
	if (ret) {
		pr_warn(VR_NAME ": relay %s/%s: out of grants (%d)\n", r->module, r->name, ret);
		kfree(req);
		return vr_finish(r, ret);
	}
	req->channel_id = r->id;
	req->flags = r->flags;
	req->subbuf_size = r->subbuf_size;
	req->n_subbufs = r->n_subbufs;
	req->n_cpus = r->n_cpus;
	req->control_grant = r->ctrl_grant;
	req->consumer_grant = r->cons_grant;
	strscpy((char *)req->module, r->module, sizeof(req->module));
	strscpy((char *)req->name, r->name, sizeof(req->name));
	for (cpu = 0; cpu < VESPER_RELAY_MAX_CPUS; cpu++)
		req->buffer_grants[cpu] = r->buf_grant[cpu];

	ret = vf_post(fe, VESPER_REQ_RELAY_OPEN, req, sizeof(*req), &r->req_id);
	kfree(req);
	if (ret)
		return vr_finish(r, ret == -ESHUTDOWN ? -ENODEV : ret);
	r->state = VR_OPENING;
}

static void vr_post_close(struct vesper_front *fe, struct vesper_relay *r)
{
	struct vesper_relay_close_request req = { .channel_id = r->id };
	int ret;

	ret = vf_post(fe, VESPER_REQ_RELAY_CLOSE, &req, sizeof(req), &r->req_id);
	if (ret) {
		/*
		 * Could not tell the host. Revoking the grants makes every later host
		 * access a checked failure rather than a read of reused pages.
		 */
		pr_warn(VR_NAME ": relay %s/%s: close request not posted (%d)\n",
			r->module, r->name, ret);
		return vr_finish(r, ret);
	}
	r->state = VR_CLOSING;
}

void vr_pump(struct vesper_front *fe)
{
	struct vesper_relay *r, *tmp;

	mutex_lock(&vr_lock);
	list_for_each_entry_safe(r, tmp, &vr_channels, node) {
		if (r->fe != fe)
			continue;
		if (r->state == VR_QUEUED_OPEN)
			vr_post_open(fe, r);
		else if (r->state == VR_QUEUED_CLOSE)
			vr_post_close(fe, r);
	}
	mutex_unlock(&vr_lock);
}

static int vr_host_error(s32 status)
{
	if (status < 0 && status >= -MAX_ERRNO)
		return status;
	return -EPROTO;
}

bool vr_response(struct vesper_front *fe, const struct vesper_msg_header *h)
{
	const u32 open_rsp = VESPER_REQ_RELAY_OPEN | VESPER_RSP_FLAG;
	const u32 close_rsp = VESPER_REQ_RELAY_CLOSE | VESPER_RSP_FLAG;
	struct vesper_relay *r, *found = NULL;

	if (h->kind != open_rsp && h->kind != close_rsp)
		return false;

	mutex_lock(&vr_lock);
	list_for_each_entry(r, &vr_channels, node) {
		if (r->fe != fe || r->req_id != h->id)
			continue;
		if ((h->kind == open_rsp && r->state == VR_OPENING) ||
		    (h->kind == close_rsp && r->state == VR_CLOSING)) {
			found = r;
			break;
		}
	}
	r = found;
	if (!r) {
		mutex_unlock(&vr_lock);
		pr_warn_ratelimited(VR_NAME ": dropping relay answer kind %#x id %llu: no such request\n",
				    h->kind, h->id);
		return true;
	}

	if (h->kind == open_rsp) {
		if (h->status) {
			pr_info(VR_NAME ": relay %s/%s: host refused the channel: %d\n",
				r->module, r->name, h->status);
			vr_finish(r, vr_host_error(h->status));
		} else if (r->abandoned) {
			/* Its opener gave up: close it again. */
			r->state = VR_QUEUED_CLOSE;
			vf_relay_kick(fe);
		} else {
			r->state = VR_OPEN;
			r->result = 0;
			/* Writer fields were set before; publish them with the flag. */
			smp_store_release(&r->connected, true);
			complete(&r->done);
		}
	} else {
		if (h->status)
			pr_info(VR_NAME ": relay %s/%s: host answered close with %d\n",
				r->module, r->name, h->status);
		vr_finish(r, 0);
	}
	mutex_unlock(&vr_lock);
	return true;
}

void vr_front_bound(struct vesper_front *fe)
{
	mutex_lock(&vr_lock);
	if (!vr_fe)
		vr_fe = fe;
	else
		pr_info(VR_NAME ": relay channels stay on the first Vesper device\n");
	mutex_unlock(&vr_lock);
}

/*
 * The frontend is about to unbind, its worker still runs: stop the writers of its
 * open channels and close them with the host (which then reads what is left), waiting
 * up to 2 s. The owners' later vesper_relay_close() finds them closed (DONE).
 */
void vr_front_unbinding(struct vesper_front *fe)
{
	unsigned long deadline = jiffies + 2 * HZ;
	struct vesper_relay *r;
	unsigned int n = 0, busy;

	mutex_lock(&vr_lock);
	list_for_each_entry(r, &vr_channels, node) {
		if (r->fe == fe && r->state == VR_OPEN) {
			WRITE_ONCE(r->connected, false);
			n++;
		}
	}
	mutex_unlock(&vr_lock);
	if (!n)
		return;
	synchronize_rcu();

	mutex_lock(&vr_lock);
	list_for_each_entry(r, &vr_channels, node)
		if (r->fe == fe && r->state == VR_OPEN)
			r->state = VR_QUEUED_CLOSE;
	vf_relay_kick(fe);
	mutex_unlock(&vr_lock);

	do {
		msleep(20);
		busy = 0;
		mutex_lock(&vr_lock);
		list_for_each_entry(r, &vr_channels, node)
			if (r->fe == fe &&
			    (r->state == VR_QUEUED_CLOSE || r->state == VR_CLOSING))
				busy++;
		mutex_unlock(&vr_lock);
	} while (busy && time_before(jiffies, deadline));
	pr_info(VR_NAME ": unbinding: closed %u of %u open relay channel(s) with the host\n",
		n - busy, n);
}

void vr_front_unbound(struct vesper_front *fe)
{
	struct vesper_relay *r, *tmp;
	unsigned int n = 0;

	mutex_lock(&vr_lock);
	list_for_each_entry_safe(r, tmp, &vr_channels, node) {
		if (r->fe != fe)
			continue;
		WRITE_ONCE(r->connected, false);
		r->fe = NULL;
		r->has_pages = false;	/* the region goes away with the frontend */
		if (r->state != VR_DONE) {
			if (r->state != VR_OPEN)
				r->result = -ENODEV;
			n++;
		}
		r->state = VR_DISCONNECTED;
		if (r->abandoned) {
			list_del(&r->node);
			vr_free(r);
		} else {
			complete(&r->done);
		}
	}
	if (vr_fe == fe)
		vr_fe = NULL;
	mutex_unlock(&vr_lock);
	/* Every writer that saw `connected` has left its interrupts-off section. */
	synchronize_rcu();
	if (n)
		pr_info(VR_NAME ": %u relay channel(s) disconnected; they return -ENODEV until closed\n",
			n);
}

/* ---- API ------------------------------------------------------------------------ */

static bool vr_done(void *arg)
{
	return completion_done(&((struct vesper_relay *)arg)->done);
}

/*
 * Wait for the worker to move r on. fe is valid: when the caller is the worker, fe
 * outlives it; otherwise only the completion is touched.
 */
static int vr_wait(struct vesper_front *fe, struct task_struct *worker,
		   struct vesper_relay *r)
{
	if (current == worker)
		return vf_wait_relay(fe, vr_done, r, VR_TIMEOUT);
	if (!wait_for_completion_timeout(&r->done, VR_TIMEOUT))
		return -ETIMEDOUT;
	return 0;
}

struct vesper_relay *vr_open_named(const char *module, const char *name,
				   size_t subbuf_size, size_t n_subbufs, unsigned int flags)
{
	struct task_struct *worker;
	struct vesper_front *fe;
	struct vesper_relay *r;
	u32 n_cpus = nr_cpu_ids, cpu;
	int ret;

	might_sleep();
	if (!name || !name[0] || strlen(name) >= VESPER_RELAY_NAME_LEN ||
	    subbuf_size < VESPER_RELAY_MIN_SUBBUF_SIZE ||
	    subbuf_size > VESPER_RELAY_MAX_SUBBUF_SIZE ||
	    subbuf_size % VESPER_PAGE_SIZE ||
	    n_subbufs < 2 || n_subbufs > VESPER_RELAY_MAX_SUBBUFS ||
	    flags & ~VESPER_RELAY_FLAG_OVERWRITE)
		return ERR_PTR(-EINVAL);
	if (n_cpus < 1 || n_cpus > VESPER_RELAY_MAX_CPUS) {
		pr_warn(VR_NAME ": relay %s: %u possible CPUs, channels span at most %u\n",
			name, n_cpus, VESPER_RELAY_MAX_CPUS);
		return ERR_PTR(-EOPNOTSUPP);
	}

	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return ERR_PTR(-ENOMEM);
	r->cpu = kcalloc(n_cpus, sizeof(*r->cpu), GFP_KERNEL);
	if (!r->cpu) {
		kfree(r);
		return ERR_PTR(-ENOMEM);
	}
	r->subbuf_size = subbuf_size;
	r->n_subbufs = n_subbufs;
	r->n_cpus = n_cpus;
	r->flags = flags;
	r->ctrl_len = n_cpus * sizeof(struct vesper_relay_buf_control) +
		      n_cpus * (u32)n_subbufs * sizeof(u32);
	r->cons_len = n_cpus * sizeof(struct vesper_relay_consumer);
	r->buf_len = (u32)n_subbufs * (u32)subbuf_size;
	r->ctrl_grant = r->cons_grant = VESPER_GRANT_REF_NONE;
	memset(r->buf_grant, 0xff, sizeof(r->buf_grant));
	init_completion(&r->done);
	strscpy(r->module, module && module[0] ? module : "vmlinux", sizeof(r->module));
	strscpy(r->name, name, sizeof(r->name));

	mutex_lock(&vr_lock);
	fe = vr_fe;
	if (!fe) {
		mutex_unlock(&vr_lock);
		vr_free(r);
		return ERR_PTR(-ENODEV);
	}
	r->fe = fe;
	ret = vr_alloc_pages(r);
	if (ret) {
		mutex_unlock(&vr_lock);
		pr_warn(VR_NAME ": relay %s/%s: no room in the data area for %u+%u+%u x %u bytes\n",
			r->module, r->name, r->ctrl_len, r->cons_len, n_cpus, r->buf_len);
		vr_free(r);
		return ERR_PTR(ret);
	}
	r->ctrl = vf_region_ptr(fe, r->ctrl_off);
	r->padding = (u32 *)(r->ctrl + n_cpus);
	r->cons = vf_region_ptr(fe, r->cons_off);
	r->doorbell = vf_doorbell_reg(fe);
	for (cpu = 0; cpu < n_cpus; cpu++)
		r->buf[cpu] = vf_region_ptr(fe, r->buf_off[cpu]);
	memset(r->ctrl, 0, r->ctrl_len);
	r->id = ++vr_next_id;
	r->state = VR_QUEUED_OPEN;
	list_add_tail(&r->node, &vr_channels);
	worker = vf_worker_task(fe);
	vf_relay_kick(fe);
	mutex_unlock(&vr_lock);

	ret = vr_wait(fe, worker, r);

	mutex_lock(&vr_lock);
	switch (r->state) {
	case VR_OPEN:
		ret = 0;
		break;
	case VR_QUEUED_OPEN:
		/* The worker never got to it (busy with a command, or stopping). */
		vr_free_pages(r);
		list_del(&r->node);
		vr_free(r);
		break;
	case VR_OPENING:
		/* Posted but unanswered: the worker closes and frees it if the host answers. */
		r->abandoned = true;
		break;
	default:	/* DONE (refused) or DISCONNECTED */
		ret = r->result ? r->result : -ENODEV;
		list_del(&r->node);
		vr_free(r);
		break;
	}
	mutex_unlock(&vr_lock);
	if (ret) {
		if (ret == -ETIMEDOUT)
			pr_warn(VR_NAME ": relay channel %s: no host answer within %d s\n",
				name, VR_TIMEOUT / HZ);
		return ERR_PTR(ret);
	}
	pr_info(VR_NAME ": relay channel %u %s/%s open: %u CPUs x %zu x %zu bytes%s\n",
		r->id, r->module, r->name, n_cpus, n_subbufs, subbuf_size,
		flags & VESPER_RELAY_FLAG_OVERWRITE ? ", overwrite" : "");
	return r;
}

struct vesper_relay *vesper_relay_open(struct module *owner, const char *name,
				       size_t subbuf_size, size_t n_subbufs,
				       unsigned int flags)
{
	return vr_open_named(owner ? owner->name : NULL, name, subbuf_size, n_subbufs,
			     flags);
}
EXPORT_SYMBOL_GPL(vesper_relay_open);

void vesper_relay_close(struct vesper_relay *r)
{
	struct task_struct *worker;
	struct vesper_front *fe;
	u64 written = 0, dropped = 0;
	u32 id;

	if (IS_ERR_OR_NULL(r))
		return;
	might_sleep();

	mutex_lock(&vr_lock);
	WRITE_ONCE(r->connected, false);
	mutex_unlock(&vr_lock);
	/* Writers that saw `connected` are done before the host reads the rest. */
	synchronize_rcu();

	vesper_relay_stats(r, &written, &dropped);
	id = r->id;

	mutex_lock(&vr_lock);
	if (r->state == VR_OPEN && r->fe) {
		fe = r->fe;
		worker = vf_worker_task(fe);
		reinit_completion(&r->done);
		r->state = VR_QUEUED_CLOSE;
		vf_relay_kick(fe);
		mutex_unlock(&vr_lock);
		if (vr_wait(fe, worker, r))
			pr_warn(VR_NAME ": relay channel %u %s/%s: no close answer within %d s\n",
				id, r->module, r->name, VR_TIMEOUT / HZ);
		mutex_lock(&vr_lock);
	}
	if (r->state == VR_DONE || r->state == VR_DISCONNECTED) {
		list_del(&r->node);
		vr_free(r);
		mutex_unlock(&vr_lock);
		pr_info(VR_NAME ": relay channel %u closed (written %llu, dropped %llu)\n",
			id, written, dropped);
	} else {
		/* Still queued or posted: the worker (or the unbind) finishes and frees it. */
		r->abandoned = true;
		mutex_unlock(&vr_lock);
		pr_info(VR_NAME ": relay channel %u closing in the background (written %llu, dropped %llu)\n",
			id, written, dropped);
	}
}
EXPORT_SYMBOL_GPL(vesper_relay_close);

void vesper_relay_stats(struct vesper_relay *r, u64 *written, u64 *dropped)
{
	u64 w = 0, d = 0;
	u32 cpu;

	if (!IS_ERR_OR_NULL(r)) {
		for (cpu = 0; cpu < r->n_cpus; cpu++) {
			w += READ_ONCE(r->cpu[cpu].written);
			d += local64_read(&r->cpu[cpu].dropped);
		}
	}
	if (written)
		*written = w;
	if (dropped)
		*dropped = d;
}
EXPORT_SYMBOL_GPL(vesper_relay_stats);

static __always_inline void vr_ring(struct vesper_relay *r)
{
	iowrite32((0 << 16) | VESPER_VECTOR_RELAY, r->doorbell);
}

static __always_inline void vr_drop(struct vesper_relay *r, struct vr_cpu *c,
				    struct vesper_relay_buf_control *ctl)
{
	local64_inc(&c->dropped);
	WRITE_ONCE(ctl->dropped, local64_read(&c->dropped));
}

/*
 * The writer of PROTOCOL.md, per CPU buffer with interrupts off. Timestamps come from
 * ktime_get_mono_fast_ns(): the CLOCK_MONOTONIC of ktime_get_ns(), but safe on the
 * panic path and inside timekeeping (it never waits for the timekeeping seqcount).
 */
int notrace vesper_relay_write(struct vesper_relay *r, u16 rtype, u16 flags,
			       const void *payload, size_t len)
{
	struct vesper_relay_buf_control *ctl;
	struct vesper_record_header hdr;
	unsigned long irqflags;
	struct vr_cpu *c;
	u32 cpu, n, size, pad;
	void *dst;
	int ret = 0;

	if (unlikely(IS_ERR_OR_NULL(r)))
		return -EINVAL;
	if (unlikely(in_nmi())) {
		cpu = raw_smp_processor_id();
		if (cpu < r->n_cpus)
			local64_inc(&r->cpu[cpu].dropped);
		return -EBUSY;
	}

	local_irq_save(irqflags);
	if (unlikely(!smp_load_acquire(&r->connected))) {
		ret = -ENODEV;
		goto out;
	}
	cpu = smp_processor_id();
	if (unlikely(cpu >= r->n_cpus)) {
		ret = -ENODEV;
		goto out;
	}
	c = &r->cpu[cpu];
	ctl = &r->ctrl[cpu];
	n = r->n_subbufs;

	if (unlikely(len > r->subbuf_size - sizeof(hdr))) {
		vr_drop(r, c, ctl);
		ret = -E2BIG;
		goto out;
	}
	size = round_up((u32)(sizeof(hdr) + len), VESPER_RECORD_ALIGN);
	if (unlikely(size > r->subbuf_size)) {
		vr_drop(r, c, ctl);
		ret = -E2BIG;
		goto out;
	}

	/* Step 2: switch to the next sub-buffer. */
	if (c->committed + size > r->subbuf_size) {
		if (!(r->flags & VESPER_RELAY_FLAG_OVERWRITE)) {
			u32 consumed = READ_ONCE(r->cons[cpu].consumed);

			if ((u32)(c->produced + 1 - consumed) >= n) {
				vr_drop(r, c, ctl);
				ret = -ENOSPC;
				goto out;
			}
		}
		WRITE_ONCE(r->padding[cpu * n + c->produced % n],
			   r->subbuf_size - c->committed);
		c->produced++;
		c->committed = 0;
		smp_wmb();	/* padding before the position that covers it */
		WRITE_ONCE(ctl->position, (u64)c->produced << 32);
		vr_ring(r);
	}

	/* Step 3: the record. */
	dst = r->buf[cpu] + (size_t)(c->produced % n) * r->subbuf_size + c->committed;
	hdr.len = sizeof(hdr) + len;
	hdr.rtype = rtype;
	hdr.flags = flags;
	hdr.seq = c->seq++;
	hdr.timestamp_ns = ktime_get_mono_fast_ns();
	memcpy(dst, &hdr, sizeof(hdr));
	if (len)
		memcpy(dst + sizeof(hdr), payload, len);
	pad = size - (u32)(sizeof(hdr) + len);
	if (pad)
		memset(dst + sizeof(hdr) + len, 0, pad);
	c->committed += size;
	c->written++;

	/* Step 4: publish. */
	smp_wmb();
	WRITE_ONCE(ctl->position, ((u64)c->produced << 32) | c->committed);
	WRITE_ONCE(ctl->written, c->written);
	WRITE_ONCE(ctl->dropped, local64_read(&c->dropped));

	/* Step 5. */
	if (flags & VESPER_RECORD_FLAG_URGENT)
		vr_ring(r);
out:
	local_irq_restore(irqflags);
	return ret;
}
EXPORT_SYMBOL_GPL(vesper_relay_write);
NOKPROBE_SYMBOL(vesper_relay_write);
