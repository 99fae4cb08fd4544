// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_front: guest frontend of Vesper for the ivshmem-doorbell PCI device.
 *
 * Implements shared-abi/PROTOCOL.md (ABI v1): one worker kthread posts requests into
 * the request ring, consumes the host's answers from the response ring and executes
 * host commands (load, unload, list modules, kernel log); a module's init runs in a
 * load-job kthread of its own, so commands are served while it runs, and the worker
 * posts its completion when it returns. Everything host-written is
 * untrusted: ring slots are copied once into private memory and parsed only there,
 * every length and index is checked. Kernel-version-specific code lives in
 * vesper_loader.c only.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/crc32.h>
#include <linux/kmsg_dump.h>
#include <linux/utsname.h>
#include <linux/cpumask.h>
#include <linux/string.h>
#include <linux/list.h>
#include <linux/err.h>
#include <linux/bitmap.h>
#include <linux/timekeeping.h>
#include <linux/spinlock.h>
#include <linux/atomic.h>
#define INCLUDE_VERMAGIC
#include <linux/vermagic.h>

#include "vesper_abi.h"
#include "vesper_loader.h"
#include "vesper_relay.h"

#define VESPER_DRV_NAME "vesper_front"
#define VESPER_FRONTEND_VERSION 1

/* ivshmem BAR0 registers */
#define IVSHMEM_REG_DOORBELL 12

/* Largest module image the guest accepts. */
#define VESPER_MAX_IMAGE_SIZE (64UL << 20)
/* Largest staging chunk the guest grants. */
#define VESPER_MAX_CHUNK (1U << 20)
/* Guest-side limit on waiting for a host answer during a command. */
#define VESPER_CMD_TIMEOUT (30 * HZ)
/* Re-scan period of the rings while waiting (lost notifications cost latency only). */
#define VESPER_POLL_PERIOD (HZ / 10)
/* Most module entries one OP_LIST reports. */
#define VESPER_MAX_LIST_ENTRIES 4096U
/* Most module inits running at once, each in a kthread of its own. */
#define VESPER_MAX_LOAD_JOBS 8U

static_assert(sizeof(struct vesper_msg_header) + VESPER_SLOT_PAYLOAD_SIZE == VESPER_SLOT_SIZE);
static_assert(sizeof(struct vesper_completion_request) <= VESPER_SLOT_PAYLOAD_SIZE);
static_assert(sizeof(struct vesper_hello_request) <= VESPER_SLOT_PAYLOAD_SIZE);

/* A module name this frontend loaded (MODULE_FLAG_PUSHED). */
struct vesper_pushed {
	struct list_head node;
	char name[VESPER_MODULE_NAME_LEN];
};

/*
 * A module whose init runs in a kthread of its own, so that the worker keeps serving
 * commands meanwhile (a driver's init may wait for its hardware for many seconds). The
 * job thread writes only result and cmpl, then sets done; the worker posts the
 * completion and reaps the thread (kthread_stop), so fe outlives every job.
 */
struct vesper_load_job {
	struct list_head node;		/* fe->load_jobs, worker-owned */
	struct vesper_front *fe;
	struct task_struct *task;
	char name[VESPER_MODULE_NAME_LEN];
	bool added_pushed;		/* this load marked name as pushed */
	u8 *image;			/* vmalloc'ed; the job thread frees it */
	u64 size;
	char params[VESPER_PARAMS_LEN];
	struct vesper_completion_request *cmpl;
	int done;			/* cmpl complete (release/acquire) */
};

struct vesper_front {
	struct pci_dev *pdev;
	void __iomem *regs;		/* BAR0 */
	void *shm;			/* BAR2, write-back */
	u64 bar_size;			/* BAR2 length */
	u64 region_size;		/* usable: min(BAR2, header region_size) */
	bool have_irq;
	wait_queue_head_t wq;
	struct task_struct *worker;
	atomic_t relay_work;		/* relay requests queued for the worker */
	atomic_t load_work;		/* a load job finished: its completion is due */

	/* Data-area page allocator: bit i = page at DATA_AREA_OFFSET + i * PAGE_SIZE. */
	spinlock_t pages_lock;
	unsigned long *pages_map;
	unsigned int n_pages;

	/* Everything below is owned by the worker (and by remove after it stopped). */
	u32 generation;
	u32 req_prod;			/* our request producer */
	u32 rsp_cons;			/* our response consumer */
	u64 next_id;
	u32 chunk_size;			/* 0 until HELLO answered */
	bool up;			/* HELLO answered: relay requests may be posted */
	bool grant_used[VESPER_GRANT_ENTRIES];
	u32 list_grant;			/* live OP_LIST grant or GRANT_REF_NONE */
	u64 list_off;			/* its data-area pages */
	unsigned int list_pages;
	u64 list_cmpl_id;		/* completion request carrying it */
	u8 *rsp;			/* private copy of one response slot */
	struct vesper_command_response cmd;	/* private copy of the command */
	struct vesper_completion_request *cmpl;
	struct list_head pushed;
	struct list_head load_jobs;	/* inits under way or awaiting their completion */
	unsigned int n_load_jobs;
};

/* ---- region accessors ------------------------------------------------------- */

static struct vesper_region_header *vf_hdr(struct vesper_front *fe)
{
	return fe->shm + VESPER_HEADER_OFFSET;
}

static struct vesper_grant_entry *vf_grant_entry(struct vesper_front *fe, u32 ref)
{
	return (struct vesper_grant_entry *)(fe->shm + VESPER_GRANT_TABLE_OFFSET) + ref;
}

static struct vesper_ring_control *vf_req_ring(struct vesper_front *fe)
{
	return fe->shm + VESPER_REQ_RING_OFFSET;
}

static struct vesper_ring_control *vf_rsp_ring(struct vesper_front *fe)
{
	return fe->shm + VESPER_RSP_RING_OFFSET;
}

static void *vf_slot(struct vesper_front *fe, u64 ring_off, u32 idx)
{
	return fe->shm + ring_off + VESPER_PAGE_SIZE +
	       (size_t)(idx % VESPER_RING_SLOTS) * VESPER_SLOT_SIZE;
}

void *vf_region_ptr(struct vesper_front *fe, u64 off)
{
	return fe->shm + off;
}

void __iomem *vf_doorbell_reg(struct vesper_front *fe)
{
	return fe->regs + IVSHMEM_REG_DOORBELL;
}

struct task_struct *vf_worker_task(struct vesper_front *fe)
{
	return fe->worker;
}

u32 vf_generation(struct vesper_front *fe)
{
	return fe->generation;
}

static u64 vf_data_space(struct vesper_front *fe)
{
	return fe->region_size - VESPER_DATA_AREA_OFFSET;
}

/* ---- data-area pages -------------------------------------------------------- */

/*
 * Staging chunks, module lists and relay channels all live in the data area; this
 * first-fit allocator over its 4 KiB pages keeps them apart. Process context only.
 */
static int vf_pages_setup(struct vesper_front *fe)
{
	spin_lock_init(&fe->pages_lock);
	fe->n_pages = (unsigned int)(vf_data_space(fe) / VESPER_PAGE_SIZE);
	fe->pages_map = bitmap_zalloc(fe->n_pages, GFP_KERNEL);
	return fe->pages_map ? 0 : -ENOMEM;
}

int vf_pages_alloc(struct vesper_front *fe, unsigned int npages, u64 *off)
{
	unsigned long start;

	if (!npages || npages > fe->n_pages)
		return -ENOSPC;
	spin_lock(&fe->pages_lock);
	start = bitmap_find_next_zero_area(fe->pages_map, fe->n_pages, 0, npages, 0);
	if (start >= fe->n_pages || start + npages > fe->n_pages) {
		spin_unlock(&fe->pages_lock);
		return -ENOSPC;
	}
	bitmap_set(fe->pages_map, start, npages);
	spin_unlock(&fe->pages_lock);
	*off = VESPER_DATA_AREA_OFFSET + (u64)start * VESPER_PAGE_SIZE;
	return 0;
}

void vf_pages_free(struct vesper_front *fe, u64 off, unsigned int npages)
{
	unsigned long start;

	if (WARN_ON(off < VESPER_DATA_AREA_OFFSET ||
		    (off - VESPER_DATA_AREA_OFFSET) % VESPER_PAGE_SIZE))
		return;
	start = (off - VESPER_DATA_AREA_OFFSET) / VESPER_PAGE_SIZE;
	if (WARN_ON(start + npages > fe->n_pages))
		return;
	spin_lock(&fe->pages_lock);
	bitmap_clear(fe->pages_map, start, npages);
	spin_unlock(&fe->pages_lock);
}

/* ---- waiting ----------------------------------------------------------------- */

static bool vf_rsp_pending(struct vesper_front *fe)
{
	return READ_ONCE(vf_rsp_ring(fe)->producer) != fe->rsp_cons;
}

/* Sleep until a notification, the poll period, or a stop request. */
static void vf_nap(struct vesper_front *fe)
{
	wait_event_interruptible_timeout(fe->wq,
					 vf_rsp_pending(fe) || kthread_should_stop() ||
					 (fe->up && (atomic_read(&fe->relay_work) ||
						     atomic_read(&fe->load_work))),
					 VESPER_POLL_PERIOD);
}

void vf_relay_kick(struct vesper_front *fe)
{
	atomic_set(&fe->relay_work, 1);
	wake_up(&fe->wq);
}

/* Sleep for delay jiffies unless asked to stop. */
static void vf_sleep(struct vesper_front *fe, unsigned long delay)
{
	wait_event_interruptible_timeout(fe->wq, kthread_should_stop(), delay);
}

static irqreturn_t vf_irq(int irq, void *data)
{
	struct vesper_front *fe = data;

	wake_up(&fe->wq);
	return IRQ_HANDLED;
}

/* ---- grants ------------------------------------------------------------------- */

int vf_grant(struct vesper_front *fe, u64 offset, u32 len, u32 access, u32 owner)
{
	struct vesper_grant_entry *g;
	u32 ref;

	if (offset < VESPER_DATA_AREA_OFFSET || offset > fe->region_size ||
	    len > fe->region_size - offset)
		return -EINVAL;

	for (ref = 0; ref < VESPER_GRANT_ENTRIES; ref++) {
		if (fe->grant_used[ref])
			continue;
		g = vf_grant_entry(fe, ref);
		WRITE_ONCE(g->state, VESPER_GRANT_STATE_FREE);
		WRITE_ONCE(g->offset, offset);
		WRITE_ONCE(g->len, len);
		WRITE_ONCE(g->access, access);
		WRITE_ONCE(g->owner, owner);
		WRITE_ONCE(g->generation, fe->generation);
		WRITE_ONCE(g->reserved, 0);
		/* The entry is complete before it becomes live. */
		smp_store_release(&g->state, VESPER_GRANT_STATE_ACTIVE);
		fe->grant_used[ref] = true;
		return ref;
	}
	return -ENOSPC;
}

void vf_revoke(struct vesper_front *fe, u32 ref)
{
	if (ref >= VESPER_GRANT_ENTRIES)
		return;
	WRITE_ONCE(vf_grant_entry(fe, ref)->state, VESPER_GRANT_STATE_FREE);
	/* Revoked before we look at (or reuse) the range. */
	smp_mb();
	fe->grant_used[ref] = false;
}

static void vf_revoke_list_grant(struct vesper_front *fe)
{
	if (fe->list_grant != VESPER_GRANT_REF_NONE) {
		vf_revoke(fe, fe->list_grant);
		fe->list_grant = VESPER_GRANT_REF_NONE;
	}
	if (fe->list_pages) {
		vf_pages_free(fe, fe->list_off, fe->list_pages);
		fe->list_pages = 0;
	}
}

/* ---- rings -------------------------------------------------------------------- */

/*
 * Post one request. Waits (up to VESPER_CMD_TIMEOUT) while the ring is full.
 * Returns 0 and the request id in *id, -ETIMEDOUT, or -ESHUTDOWN.
 */
int vf_post(struct vesper_front *fe, u32 kind, const void *payload, u32 len,
		   u64 *id)
{
	struct vesper_ring_control *rc = vf_req_ring(fe);
	unsigned long deadline = jiffies + VESPER_CMD_TIMEOUT;
	struct vesper_msg_header hdr;
	void *slot;
	u32 prod = fe->req_prod;

	if (WARN_ON(len > VESPER_SLOT_PAYLOAD_SIZE))
		return -EINVAL;

	/* Host-written consumer: anything but 0..RING_SLOTS-1 behind us means "full". */
	while ((u32)(prod - smp_load_acquire(&rc->consumer)) >= VESPER_RING_SLOTS) {
		if (kthread_should_stop())
			return -ESHUTDOWN;
		if (time_after(jiffies, deadline)) {
			pr_warn_ratelimited(VESPER_DRV_NAME ": request ring full for 30 s\n");
			return -ETIMEDOUT;
		}
		vf_sleep(fe, VESPER_POLL_PERIOD);
	}

	memset(&hdr, 0, sizeof(hdr));
	hdr.kind = kind;
	hdr.len = len;
	hdr.id = ++fe->next_id;
	hdr.status = 0;
	hdr.generation = fe->generation;

	slot = vf_slot(fe, VESPER_REQ_RING_OFFSET, prod);
	memcpy(slot, &hdr, sizeof(hdr));
	if (len)
		memcpy(slot + sizeof(hdr), payload, len);
	/* Slot contents before the new producer index. */
	smp_store_release(&rc->producer, prod + 1);
	fe->req_prod = prod + 1;

	/* Doorbell: peer 0, vector 0. */
	iowrite32((0 << 16) | 0, fe->regs + IVSHMEM_REG_DOORBELL);
	*id = hdr.id;
	return 0;
}

/* Copy the next response slot into fe->rsp. Returns true if there was one. */
static bool vf_pop(struct vesper_front *fe)
{
	struct vesper_ring_control *rc = vf_rsp_ring(fe);
	u32 prod = smp_load_acquire(&rc->producer);
	u32 cons = fe->rsp_cons;
	u32 avail = prod - cons;

	if (!avail)
		return false;
	if (avail > VESPER_RING_SLOTS) {
		pr_warn_ratelimited(VESPER_DRV_NAME
				    ": host response producer %u is %u ahead of consumer %u, skipping\n",
				    prod, avail, cons);
		fe->rsp_cons = prod;
		smp_store_release(&rc->consumer, prod);
		return false;
	}
	memcpy(fe->rsp, vf_slot(fe, VESPER_RSP_RING_OFFSET, cons), VESPER_SLOT_SIZE);
	/* Done reading the slot before handing it back. */
	smp_store_release(&rc->consumer, cons + 1);
	fe->rsp_cons = cons + 1;
	return true;
}

static struct vesper_msg_header *vf_rsp_hdr(struct vesper_front *fe)
{
	return (struct vesper_msg_header *)fe->rsp;
}

static void *vf_rsp_payload(struct vesper_front *fe)
{
	return fe->rsp + sizeof(struct vesper_msg_header);
}

/* A response nobody waits for right now. */
static void vf_stray(struct vesper_front *fe, const struct vesper_msg_header *h)
{
	if (vr_response(fe, h))
		return;	/* answer to a relay open/close */
	if (h->kind == (VESPER_REQ_COMPLETION | VESPER_RSP_FLAG) &&
	    h->id == fe->list_cmpl_id && fe->list_grant != VESPER_GRANT_REF_NONE) {
		/* The host copied the module list out. */
		vf_revoke_list_grant(fe);
		return;
	}
	if (h->kind == (VESPER_REQ_COMPLETION | VESPER_RSP_FLAG))
		return;	/* plain completion acknowledgement */
	pr_warn_ratelimited(VESPER_DRV_NAME ": dropping unexpected response kind %#x id %llu\n",
			    h->kind, h->id);
}

/*
 * Copy the next usable response into fe->rsp: of our generation, with a sane length.
 * Returns false when the ring is empty.
 */
static bool vf_next_rsp(struct vesper_front *fe)
{
	struct vesper_msg_header *h = vf_rsp_hdr(fe);

	while (vf_pop(fe)) {
		if (h->generation != fe->generation) {
			pr_info_ratelimited(VESPER_DRV_NAME
					    ": dropping response of generation %u (ours %u)\n",
					    h->generation, fe->generation);
			continue;
		}
		if (h->len > VESPER_SLOT_PAYLOAD_SIZE) {
			pr_warn_ratelimited(VESPER_DRV_NAME
					    ": dropping response with len %u\n", h->len);
			continue;
		}
		return true;
	}
	return false;
}

static void vf_pump_loads(struct vesper_front *fe);

/* What the worker does while it waits: queued relay requests, finished loads. */
static void vf_pump(struct vesper_front *fe)
{
	if (!fe->up)
		return;
	if (atomic_xchg(&fe->relay_work, 0))
		vr_pump(fe);
	if (atomic_xchg(&fe->load_work, 0))
		vf_pump_loads(fe);
}

/*
 * Wait for the answer to request id of kind kind. timeout 0 waits forever. On success
 * the response is in fe->rsp; its header len is <= SLOT_PAYLOAD_SIZE and, when status
 * is 0, >= min_len. Returns 0, -ETIMEDOUT, -ESHUTDOWN, or -EPROTO (short payload).
 * Meanwhile posts queued relay requests and finished loads' completions, and handles
 * their answers.
 */
static int vf_wait(struct vesper_front *fe, u64 id, u32 kind, unsigned long timeout,
		   u32 min_len)
{
	unsigned long deadline = jiffies + timeout;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);

	for (;;) {
		vf_pump(fe);
		while (vf_next_rsp(fe)) {
			if (h->id != id || h->kind != (kind | VESPER_RSP_FLAG)) {
				vf_stray(fe, h);
				continue;
			}
			if (h->status == 0 && h->len < min_len) {
				pr_warn(VESPER_DRV_NAME
					": response kind %#x has %u payload bytes, need %u\n",
					h->kind, h->len, min_len);
				return -EPROTO;
			}
			return 0;
		}
		if (kthread_should_stop())
			return -ESHUTDOWN;
		if (timeout && time_after_eq(jiffies, deadline))
			return -ETIMEDOUT;
		vf_nap(fe);
	}
}

int vf_wait_relay(struct vesper_front *fe, bool (*done)(void *arg), void *arg,
		  unsigned long timeout)
{
	unsigned long deadline = jiffies + timeout;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);

	if (WARN_ON(current != fe->worker))
		return -EINVAL;
	for (;;) {
		vf_pump(fe);
		while (vf_next_rsp(fe))
			vf_stray(fe, h);
		if (done(arg))
			return 0;
		if (kthread_should_stop())
			return -ESHUTDOWN;
		if (time_after_eq(jiffies, deadline))
			return -ETIMEDOUT;
		vf_nap(fe);
	}
}

/* Host status → errno we pass on: negative errnos only, anything else is -EPROTO. */
static int vf_host_error(s32 status)
{
	if (status < 0 && status >= -MAX_ERRNO)
		return status;
	return -EPROTO;
}

/* ---- kernel log ---------------------------------------------------------------- */

/* Newest kernel log lines that fit into the completion's log. */
static void vf_fill_log(struct vesper_completion_request *c)
{
	struct kmsg_dump_iter iter;
	size_t len = 0;

	kmsg_dump_rewind(&iter);
	if (!kmsg_dump_get_buffer(&iter, false, (char *)c->log, sizeof(c->log), &len))
		len = 0;
	c->log_len = min_t(size_t, len, sizeof(c->log));
}

/* ---- pushed-module bookkeeping ---------------------------------------------- */

/* Module names as the kernel spells them ('-' becomes '_'). */
static void vf_normalize_name(char *dst, const char *src, size_t size)
{
	size_t i;

	strscpy(dst, src, size);
	for (i = 0; dst[i]; i++)
		if (dst[i] == '-')
			dst[i] = '_';
}

static struct vesper_pushed *vf_find_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p;

	list_for_each_entry(p, &fe->pushed, node)
		if (!strcmp(p->name, name))
			return p;
	return NULL;
}

static void vf_add_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p;

	if (!name[0] || vf_find_pushed(fe, name))
		return;
	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return;
	strscpy(p->name, name, sizeof(p->name));
	list_add_tail(&p->node, &fe->pushed);
}

static void vf_del_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p = vf_find_pushed(fe, name);

	if (p) {
		list_del(&p->node);
		kfree(p);
	}
}

/* ---- commands ------------------------------------------------------------------ */

/* Outcome of a command; stage is STAGE_*. deferred: a load job posts the completion. */
struct vf_result {
	int error;
	u32 stage;
	bool deferred;
};

static void vf_fail(struct vf_result *r, int error, u32 stage)
{
	r->error = error;
	r->stage = stage;
}

/* ---- load jobs ------------------------------------------------------------------ */

static int vf_load_job_thread(void *data)
{
	struct vesper_load_job *job = data;
	struct vesper_completion_request *c = job->cmpl;
	unsigned int stage;
	int ret;

	ret = vesper_loader_load(job->image, job->size, job->params, &stage);
	c->error = ret;
	c->stage = ret ? stage : VESPER_STAGE_DONE;
	if (ret)
		vf_fill_log(c);
	smp_store_release(&job->done, 1);
	atomic_set(&job->fe->load_work, 1);
	wake_up(&job->fe->wq);

	/* Kept until the worker has posted the completion and reaps us. */
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

static void vf_free_load_job(struct vesper_load_job *job)
{
	vfree(job->image);
	kfree(job->cmpl);
	kfree(job);
}

/* Stops (after init returned) and frees a job. Worker, or remove after the worker. */
static void vf_reap_load_job(struct vesper_front *fe, struct vesper_load_job *job)
{
	list_del(&job->node);
	fe->n_load_jobs--;
	kthread_stop(job->task);
	vf_free_load_job(job);
}

/*
 * Runs init_module for image in a job thread; on success the job owns *image (set to
 * NULL) and the completion is posted when init returns. Worker only.
 */
static int vf_start_load_job(struct vesper_front *fe, u64 command_id, const char *name,
			     u8 **image, u64 size, const char *params)
{
	struct vesper_load_job *job;

	job = kzalloc(sizeof(*job), GFP_KERNEL);
	if (!job)
		return -ENOMEM;
	job->cmpl = kzalloc(sizeof(*job->cmpl), GFP_KERNEL);
	if (!job->cmpl) {
		kfree(job);
		return -ENOMEM;
	}
	job->fe = fe;
	strscpy(job->name, name, sizeof(job->name));
	strscpy(job->params, params, sizeof(job->params));
	job->size = size;
	job->cmpl->command_id = command_id;
	job->cmpl->op = VESPER_OP_LOAD;
	job->cmpl->data_grant = VESPER_GRANT_REF_NONE;
	/* `vesper lsmod` shows it pushed while it is still coming. */
	job->added_pushed = !vf_find_pushed(fe, name);
	if (job->added_pushed)
		vf_add_pushed(fe, name);

	job->image = *image;
	job->task = kthread_run(vf_load_job_thread, job, "vesper-load");
	if (IS_ERR(job->task)) {
		int ret = PTR_ERR(job->task);

		job->image = NULL;	/* still the caller's */
		if (job->added_pushed)
			vf_del_pushed(fe, name);
		vf_free_load_job(job);
		return ret;
	}
	*image = NULL;
	list_add_tail(&job->node, &fe->load_jobs);
	fe->n_load_jobs++;
	return 0;
}

/* Posts the completion of every load whose init returned, and reaps its job. */
static void vf_pump_loads(struct vesper_front *fe)
{
	struct vesper_load_job *job, *tmp;
	u64 id;

	list_for_each_entry_safe(job, tmp, &fe->load_jobs, node) {
		struct vesper_completion_request *c = job->cmpl;

		if (!smp_load_acquire(&job->done))
			continue;
		if (c->error) {
			pr_info(VESPER_DRV_NAME ": load %s failed: %d\n", job->name, c->error);
			if (job->added_pushed)
				vf_del_pushed(fe, job->name);
		} else {
			pr_info(VESPER_DRV_NAME ": loaded %s (%llu bytes)\n", job->name, job->size);
		}
		c->guest_time_ns = ktime_get_ns();
		if (vf_post(fe, VESPER_REQ_COMPLETION, c, sizeof(*c), &id) == -ESHUTDOWN) {
			atomic_set(&fe->load_work, 1);	/* still due; remove reaps it */
			return;
		}
		vf_reap_load_job(fe, job);
	}
}

/*
 * REQ_PROGRESS: the command enters stage. Returns 0 when the host says go on, its
 * error (-ECANCELED: it gave up on the command) or a wait failure.
 */
static int vf_progress(struct vesper_front *fe, u64 command_id, u32 stage)
{
	struct vesper_progress_request req;
	s32 status;
	u64 id;
	int ret;

	memset(&req, 0, sizeof(req));
	req.command_id = command_id;
	req.stage = stage;
	ret = vf_post(fe, VESPER_REQ_PROGRESS, &req, sizeof(req), &id);
	if (!ret)
		ret = vf_wait(fe, id, VESPER_REQ_PROGRESS, VESPER_CMD_TIMEOUT, 0);
	if (ret)
		return ret;
	status = vf_rsp_hdr(fe)->status;
	return status ? vf_host_error(status) : 0;
}

static void vf_do_load(struct vesper_front *fe, const char *name, struct vf_result *r)
{
	const struct vesper_command_response *cmd = &fe->cmd;
	struct vesper_fetch_chunk_request req;
	struct vesper_chunk_response rsp;
	char params[VESPER_PARAMS_LEN];
	u64 size = cmd->image_size;
	u64 off = 0;
	unsigned int stage;
	u32 chunk = fe->chunk_size;
	unsigned int stage_pages = 0;
	u64 stage_off = 0;
	u8 *image;
	int ret;

	if (cmd->params_len >= VESPER_PARAMS_LEN)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	memcpy(params, cmd->params, cmd->params_len);
	params[cmd->params_len] = '\0';

	if (!size)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	if (size > VESPER_MAX_IMAGE_SIZE)
		return vf_fail(r, -EFBIG, VESPER_STAGE_PREPARE);
	if (!vesper_loader_can_load())
		return vf_fail(r, -ENOSYS, VESPER_STAGE_PREPARE);
	if (!fe->chunk_size)
		return vf_fail(r, -EPROTO, VESPER_STAGE_PREPARE);
	if (fe->n_load_jobs >= VESPER_MAX_LOAD_JOBS) {
		pr_info(VESPER_DRV_NAME ": load %s: %u module inits still running\n", name,
			fe->n_load_jobs);
		return vf_fail(r, -EBUSY, VESPER_STAGE_PREPARE);
	}

	/* Staging pages: a full chunk if the data area has room, else smaller chunks. */
	for (;;) {
		stage_pages = DIV_ROUND_UP(chunk, VESPER_PAGE_SIZE);
		if (!vf_pages_alloc(fe, stage_pages, &stage_off))
			break;
		if (chunk <= VESPER_PAGE_SIZE) {
			pr_warn(VESPER_DRV_NAME ": load %s: no free data-area page to stage into\n",
				name);
			return vf_fail(r, -ENOSPC, VESPER_STAGE_PREPARE);
		}
		chunk = max_t(u32, rounddown(chunk / 2, VESPER_PAGE_SIZE), VESPER_PAGE_SIZE);
	}

	image = vmalloc(size);
	if (!image) {
		vf_pages_free(fe, stage_off, stage_pages);
		return vf_fail(r, -ENOMEM, VESPER_STAGE_PREPARE);
	}

	while (off < size) {
		u32 want = (u32)min_t(u64, chunk, size - off);
		struct vesper_msg_header *h = vf_rsp_hdr(fe);
		u64 id;
		int ref;

		ref = vf_grant(fe, stage_off, want, VESPER_GRANT_WRITE,
			       VESPER_GRANT_OWNER_STAGING);
		if (ref < 0) {
			vf_fail(r, ref, VESPER_STAGE_TRANSFER);
			goto out;
		}

		memset(&req, 0, sizeof(req));
		req.command_id = cmd->command_id;
		req.offset = off;
		req.grant_ref = ref;
		ret = vf_post(fe, VESPER_REQ_FETCH_CHUNK, &req, sizeof(req), &id);
		if (!ret)
			ret = vf_wait(fe, id, VESPER_REQ_FETCH_CHUNK, VESPER_CMD_TIMEOUT,
				      sizeof(rsp));
		vf_revoke(fe, ref);
		if (ret) {
			if (ret == -ETIMEDOUT)
				pr_warn(VESPER_DRV_NAME
					": load %s: no chunk answer for offset %llu within 30 s\n",
					name, off);
			vf_fail(r, ret, VESPER_STAGE_TRANSFER);
			goto out;
		}
		if (h->status) {
			pr_info(VESPER_DRV_NAME ": load %s: host refused chunk at %llu: %d\n",
				name, off, h->status);
			vf_fail(r, vf_host_error(h->status), VESPER_STAGE_TRANSFER);
			goto out;
		}
		memcpy(&rsp, vf_rsp_payload(fe), sizeof(rsp));
		if (rsp.command_id != cmd->command_id || rsp.offset != off ||
		    rsp.len == 0 || rsp.len > want) {
			pr_warn(VESPER_DRV_NAME
				": load %s: bad chunk answer (command %llu offset %llu len %u, wanted %llu/%llu/<=%u)\n",
				name, rsp.command_id, rsp.offset, rsp.len,
				cmd->command_id, off, want);
			vf_fail(r, -EPROTO, VESPER_STAGE_TRANSFER);
			goto out;
		}
		/* Copy once out of shared memory, then check only the private copy. */
		memcpy(image + off, fe->shm + stage_off, rsp.len);
		if ((crc32_le(~0U, image + off, rsp.len) ^ ~0U) != rsp.crc32) {
			pr_warn(VESPER_DRV_NAME ": load %s: chunk at %llu fails its CRC\n",
				name, off);
			vf_fail(r, -EBADMSG, VESPER_STAGE_TRANSFER);
			goto out;
		}
		off += rsp.len;
	}

	/* The image is complete: the staging pages are free again (relay may use them). */
	vf_pages_free(fe, stage_off, stage_pages);
	stage_pages = 0;

	if ((crc32_le(~0U, image, size) ^ ~0U) != cmd->image_crc32) {
		pr_warn(VESPER_DRV_NAME ": load %s: image fails its CRC\n", name);
		vf_fail(r, -EBADMSG, VESPER_STAGE_TRANSFER);
		goto out;
	}

	/*
	 * Init may run long. The host says go on (and waits by its init limit from now),
	 * or that it gave up meanwhile: then nothing is loaded.
	 */
	ret = vf_progress(fe, cmd->command_id, VESPER_STAGE_INIT_MODULE);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": load %s: host did not confirm init: %d\n", name, ret);
		vf_fail(r, ret, VESPER_STAGE_TRANSFER);
		goto out;
	}
	ret = vf_start_load_job(fe, cmd->command_id, name, &image, size, params);
	if (!ret) {
		r->deferred = true;
		goto out;
	}
	pr_warn(VESPER_DRV_NAME ": load %s: no load thread (%d); init runs in the worker\n",
		name, ret);
	ret = vesper_loader_load(image, size, params, &stage);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": load %s failed: %d\n", name, ret);
		vf_fail(r, ret, stage);
		goto out;
	}
	pr_info(VESPER_DRV_NAME ": loaded %s (%llu bytes)\n", name, size);
	vf_add_pushed(fe, name);
out:
	if (stage_pages)
		vf_pages_free(fe, stage_off, stage_pages);
	vfree(image);
}

static void vf_do_unload(struct vesper_front *fe, const char *name, struct vf_result *r)
{
	unsigned int stage;
	int ret;

	if (!name[0] || fe->cmd.flags & ~VESPER_UNLOAD_FLAG_FORCE)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	if (!strcmp(name, THIS_MODULE->name)) {
		/* Our own exit would wait for this very thread. */
		pr_info(VESPER_DRV_NAME ": refusing to unload the frontend itself\n");
		return vf_fail(r, -EBUSY, VESPER_STAGE_DELETE_MODULE);
	}
	ret = vesper_loader_unload(name, fe->cmd.flags, &stage);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": unload %s failed: %d\n", name, ret);
		return vf_fail(r, ret, stage);
	}
	pr_info(VESPER_DRV_NAME ": unloaded %s\n", name);
	vf_del_pushed(fe, name);
}

static void vf_do_list(struct vesper_front *fe, struct vf_result *r)
{
	struct vesper_completion_request *c = fe->cmpl;
	struct vesper_module_entry *e;
	unsigned int max, total, i, pages;
	size_t bytes;
	int n, ref, ret;
	u64 off;

	max = (unsigned int)min_t(u64, vf_data_space(fe) / sizeof(*e),
				  VESPER_MAX_LIST_ENTRIES);
	e = kvcalloc(max, sizeof(*e), GFP_KERNEL);
	if (!e)
		return vf_fail(r, -ENOMEM, VESPER_STAGE_LIST);

	n = vesper_loader_list(e, max, &total);
	if (n < 0) {
		vf_fail(r, n, VESPER_STAGE_LIST);
		goto out;
	}
	if (total > (unsigned int)n)
		pr_warn(VESPER_DRV_NAME ": module list truncated to %d of %u\n", n, total);
	for (i = 0; i < (unsigned int)n; i++) {
		e[i].name[sizeof(e[i].name) - 1] = '\0';
		if (vf_find_pushed(fe, (const char *)e[i].name))
			e[i].flags |= VESPER_MODULE_FLAG_PUSHED;
		if (!strcmp((const char *)e[i].name, THIS_MODULE->name))
			e[i].flags |= VESPER_MODULE_FLAG_FRONTEND;
	}

	bytes = (size_t)n * sizeof(*e);
	pages = max_t(unsigned int, DIV_ROUND_UP(bytes, VESPER_PAGE_SIZE), 1);
	ret = vf_pages_alloc(fe, pages, &off);
	if (ret) {
		vf_fail(r, ret, VESPER_STAGE_LIST);
		goto out;
	}
	memcpy(fe->shm + off, e, bytes);
	ref = vf_grant(fe, off, (u32)bytes, VESPER_GRANT_READ, VESPER_GRANT_OWNER_MODLIST);
	if (ref < 0) {
		vf_pages_free(fe, off, pages);
		vf_fail(r, ref, VESPER_STAGE_LIST);
		goto out;
	}
	fe->list_off = off;
	fe->list_pages = pages;
	fe->list_grant = ref;
	c->data_grant = ref;
	c->data_len = (u32)bytes;
out:
	kvfree(e);
}

static const char *vf_op_name(u32 op)
{
	switch (op) {
	case VESPER_OP_LOAD: return "load";
	case VESPER_OP_UNLOAD: return "unload";
	case VESPER_OP_LIST: return "list";
	case VESPER_OP_KMSG: return "kmsg";
	case VESPER_OP_CLOCK: return "clock";
	default: return "unknown";
	}
}

/*
 * Execute fe->cmd and post its completion. Returns -ESHUTDOWN if the frontend is
 * stopping (no completion posted), else 0.
 */
static int vf_run_command(struct vesper_front *fe)
{
	struct vesper_completion_request *c = fe->cmpl;
	struct vf_result r = { 0, VESPER_STAGE_DONE };
	char name[VESPER_MODULE_NAME_LEN];
	u64 id;
	int ret;

	/* A list grant whose completion the host never answered: the range is ours again. */
	vf_revoke_list_grant(fe);

	memset(c, 0, sizeof(*c));
	c->command_id = fe->cmd.command_id;
	c->op = fe->cmd.op;
	c->data_grant = VESPER_GRANT_REF_NONE;

	fe->cmd.name[sizeof(fe->cmd.name) - 1] = '\0';
	vf_normalize_name(name, (const char *)fe->cmd.name, sizeof(name));

	switch (fe->cmd.op) {
	case VESPER_OP_LOAD:
		vf_do_load(fe, name, &r);
		break;
	case VESPER_OP_UNLOAD:
		vf_do_unload(fe, name, &r);
		break;
	case VESPER_OP_LIST:
		vf_do_list(fe, &r);
		break;
	case VESPER_OP_KMSG:
		vf_fill_log(c);
		break;
	case VESPER_OP_CLOCK:
		break;	/* completed at once; guest_time_ns is stamped below */
	default:
		pr_info(VESPER_DRV_NAME ": unknown command op %u\n", fe->cmd.op);
		vf_fail(&r, -EINVAL, VESPER_STAGE_COMMAND);
		break;
	}

	if (r.error == -ESHUTDOWN)
		return -ESHUTDOWN;
	if (r.deferred)
		return 0;	/* the load job completes it */

	c->error = r.error;
	c->stage = r.error ? r.stage : VESPER_STAGE_DONE;
	if (r.error) {
		pr_info(VESPER_DRV_NAME ": command %llu (%s %s) failed at stage %u: %d\n",
			c->command_id, vf_op_name(c->op), name, c->stage, c->error);
		vf_fill_log(c);
	}

	/* As late as possible before posting: the host brackets it with its round trip. */
	c->guest_time_ns = ktime_get_ns();
	ret = vf_post(fe, VESPER_REQ_COMPLETION, c, sizeof(*c), &id);
	if (ret) {
		vf_revoke_list_grant(fe);
		return ret == -ESHUTDOWN ? ret : 0;
	}
	if (fe->list_grant != VESPER_GRANT_REF_NONE)
		fe->list_cmpl_id = id;
	return 0;
}

/* ---- worker ---------------------------------------------------------------------- */

/* Protocol start-up step 2: forget any previous life of the region. */
static void vf_reset_region(struct vesper_front *fe)
{
	struct vesper_region_header *hdr = vf_hdr(fe);
	u32 ref, gen;

	/*
	 * The new generation goes out before the grants are freed, so a host that finds
	 * a grant of an open channel gone can tell a restart from a misbehaving guest.
	 */
	gen = READ_ONCE(hdr->generation) + 1;
	if (!gen)
		gen = 1;
	fe->generation = gen;
	WRITE_ONCE(hdr->generation, gen);
	WRITE_ONCE(hdr->guest_features, 0);
	smp_wmb();

	for (ref = 0; ref < VESPER_GRANT_ENTRIES; ref++) {
		WRITE_ONCE(vf_grant_entry(fe, ref)->state, VESPER_GRANT_STATE_FREE);
		fe->grant_used[ref] = false;
	}
	fe->list_grant = VESPER_GRANT_REF_NONE;

	fe->req_prod = READ_ONCE(vf_req_ring(fe)->consumer);
	WRITE_ONCE(vf_req_ring(fe)->producer, fe->req_prod);
	fe->rsp_cons = READ_ONCE(vf_rsp_ring(fe)->producer);
	WRITE_ONCE(vf_rsp_ring(fe)->consumer, fe->rsp_cons);
	smp_mb();
}

/* Protocol start-up step 3. Returns 0, or -ESHUTDOWN / -EPROTO / host error. */
static int vf_hello(struct vesper_front *fe)
{
	struct vesper_hello_request *hello;
	struct vesper_hello_response rsp;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);
	u64 id;
	int ret;

	hello = kzalloc(sizeof(*hello), GFP_KERNEL);
	if (!hello)
		return -ENOMEM;
	hello->frontend_version = VESPER_FRONTEND_VERSION;
	hello->nr_cpus = num_online_cpus();
	hello->page_size = PAGE_SIZE;
	hello->region_size = fe->bar_size;
	strscpy((char *)hello->kernel_release, utsname()->release,
		sizeof(hello->kernel_release));
	strscpy((char *)hello->vermagic, VERMAGIC_STRING, sizeof(hello->vermagic));

	ret = vf_post(fe, VESPER_REQ_HELLO, hello, sizeof(*hello), &id);
	kfree(hello);
	if (ret)
		return ret;
	ret = vf_wait(fe, id, VESPER_REQ_HELLO, 0, sizeof(rsp));
	if (ret)
		return ret;
	if (h->status) {
		pr_err(VESPER_DRV_NAME ": host refused HELLO: %d\n", h->status);
		return vf_host_error(h->status);
	}
	memcpy(&rsp, vf_rsp_payload(fe), sizeof(rsp));
	fe->chunk_size = (u32)min3((u64)rsp.max_chunk, (u64)VESPER_MAX_CHUNK,
				   vf_data_space(fe));
	pr_info(VESPER_DRV_NAME ": host v%u, generation %u, chunk %u bytes, host max image %llu\n",
		rsp.host_version, fe->generation, fe->chunk_size, rsp.max_image_size);
	return 0;
}

static int vf_worker(void *data)
{
	struct vesper_front *fe = data;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);
	int ret;

	vf_reset_region(fe);
	ret = vf_hello(fe);
	if (ret) {
		if (ret != -ESHUTDOWN)
			pr_err(VESPER_DRV_NAME ": start-up failed (%d), frontend idle\n", ret);
		goto idle;
	}
	smp_wmb();
	WRITE_ONCE(vf_hdr(fe)->guest_state, VESPER_GUEST_STATE_UP);
	fe->up = true;

	while (!kthread_should_stop()) {
		u64 id;

		ret = vf_post(fe, VESPER_REQ_WAIT_COMMAND, NULL, 0, &id);
		if (ret == -ESHUTDOWN)
			break;
		if (ret) {
			vf_sleep(fe, HZ);
			continue;
		}
		ret = vf_wait(fe, id, VESPER_REQ_WAIT_COMMAND, 0,
			      offsetof(struct vesper_command_response, params));
		if (ret == -ESHUTDOWN)
			break;
		if (ret) {
			vf_sleep(fe, HZ);
			continue;
		}
		if (h->status) {
			pr_warn_ratelimited(VESPER_DRV_NAME ": host answered WAIT_COMMAND with %d\n",
					    h->status);
			vf_sleep(fe, HZ);
			continue;
		}
		/* Copy the command once; a short one keeps zeroes in the tail. */
		memset(&fe->cmd, 0, sizeof(fe->cmd));
		memcpy(&fe->cmd, vf_rsp_payload(fe),
		       min_t(u32, h->len, sizeof(fe->cmd)));
		if (fe->cmd.op == VESPER_OP_LOAD &&
		    h->len < offsetof(struct vesper_command_response, params) +
			     min_t(u32, fe->cmd.params_len, VESPER_PARAMS_LEN))
			fe->cmd.params_len = VESPER_PARAMS_LEN;	/* rejected as malformed */
		if (vf_run_command(fe) == -ESHUTDOWN)
			break;
	}
idle:
	while (!kthread_should_stop())
		vf_sleep(fe, HZ);
	return 0;
}

/* ---- PCI ------------------------------------------------------------------------ */

/* Protocol start-up step 1: is this ivshmem device a Vesper region? */
static int vf_check_region(struct vesper_front *fe)
{
	struct vesper_region_header *hdr = vf_hdr(fe);
	u64 magic = READ_ONCE(hdr->magic);
	u32 abi = READ_ONCE(hdr->abi_version);
	u32 state = READ_ONCE(hdr->host_state);
	u64 size = READ_ONCE(hdr->region_size);

	if (magic != VESPER_REGION_MAGIC) {
		pr_info(VESPER_DRV_NAME ": %s: ivshmem region magic %#llx is not Vesper's, not binding\n",
			pci_name(fe->pdev), magic);
		return -ENODEV;
	}
	if (abi != VESPER_ABI_VERSION) {
		pr_info(VESPER_DRV_NAME ": %s: Vesper ABI %u, this frontend speaks %u, not binding\n",
			pci_name(fe->pdev), abi, VESPER_ABI_VERSION);
		return -ENODEV;
	}
	if (state != VESPER_HOST_STATE_READY) {
		pr_info(VESPER_DRV_NAME ": %s: Vesper host state %u is not ready, not binding\n",
			pci_name(fe->pdev), state);
		return -ENODEV;
	}
	fe->region_size = min(size, fe->bar_size);
	if (fe->bar_size < VESPER_MIN_REGION_SIZE ||
	    fe->region_size < VESPER_MIN_REGION_SIZE) {
		pr_info(VESPER_DRV_NAME ": %s: region of %llu bytes (BAR %llu) is below the %u minimum, not binding\n",
			pci_name(fe->pdev), size, fe->bar_size, VESPER_MIN_REGION_SIZE);
		return -ENODEV;
	}
	if (size != fe->bar_size)
		pr_warn(VESPER_DRV_NAME ": %s: header says %llu bytes, BAR2 has %llu; using %llu\n",
			pci_name(fe->pdev), size, fe->bar_size, fe->region_size);
	return 0;
}

static int vf_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vesper_front *fe;
	int ret, nvec;

	fe = kzalloc(sizeof(*fe), GFP_KERNEL);
	if (!fe)
		return -ENOMEM;
	fe->pdev = pdev;
	init_waitqueue_head(&fe->wq);
	INIT_LIST_HEAD(&fe->pushed);
	INIT_LIST_HEAD(&fe->load_jobs);
	fe->list_grant = VESPER_GRANT_REF_NONE;

	fe->rsp = kmalloc(VESPER_SLOT_SIZE, GFP_KERNEL);
	fe->cmpl = kmalloc(sizeof(*fe->cmpl), GFP_KERNEL);
	if (!fe->rsp || !fe->cmpl) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_free;
	ret = pci_request_regions(pdev, VESPER_DRV_NAME);
	if (ret)
		goto err_disable;

	fe->regs = pci_iomap(pdev, 0, 0);
	if (!fe->regs) {
		ret = -ENOMEM;
		goto err_regions;
	}
	fe->bar_size = pci_resource_len(pdev, 2);
	if (!fe->bar_size) {
		pr_info(VESPER_DRV_NAME ": %s: no BAR2 (no shared memory yet?), not binding\n",
			pci_name(pdev));
		ret = -ENODEV;
		goto err_iounmap;
	}
	fe->shm = memremap(pci_resource_start(pdev, 2), fe->bar_size, MEMREMAP_WB);
	if (!fe->shm) {
		ret = -ENOMEM;
		goto err_iounmap;
	}

	ret = vf_check_region(fe);
	if (ret)
		goto err_memunmap;
	ret = vf_pages_setup(fe);
	if (ret)
		goto err_memunmap;

	pci_set_master(pdev);
	nvec = pci_alloc_irq_vectors(pdev, 1, 2, PCI_IRQ_MSIX);
	if (nvec > 0) {
		ret = request_irq(pci_irq_vector(pdev, 0), vf_irq, 0, VESPER_DRV_NAME, fe);
		if (ret) {
			pci_free_irq_vectors(pdev);
			pr_info(VESPER_DRV_NAME ": %s: request_irq failed (%d), polling\n",
				pci_name(pdev), ret);
		} else {
			fe->have_irq = true;
		}
	} else {
		pr_info(VESPER_DRV_NAME ": %s: no MSI-X (%d), polling every 100 ms\n",
			pci_name(pdev), nvec);
	}

	pci_set_drvdata(pdev, fe);
	fe->worker = kthread_run(vf_worker, fe, "vesper-front");
	if (IS_ERR(fe->worker)) {
		ret = PTR_ERR(fe->worker);
		goto err_irq;
	}
	vr_front_bound(fe);
	pr_info(VESPER_DRV_NAME ": %s: bound to Vesper region of %llu bytes (%s)\n",
		pci_name(pdev), fe->region_size, fe->have_irq ? "MSI-X" : "polling");
	return 0;

err_irq:
	if (fe->have_irq) {
		free_irq(pci_irq_vector(pdev, 0), fe);
		pci_free_irq_vectors(pdev);
	}
	pci_clear_master(pdev);
err_memunmap:
	bitmap_free(fe->pages_map);
	memunmap(fe->shm);
err_iounmap:
	pci_iounmap(pdev, fe->regs);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_free:
	kfree(fe->cmpl);
	kfree(fe->rsp);
	kfree(fe);
	return ret;
}

static void vf_remove(struct pci_dev *pdev)
{
	struct vesper_front *fe = pci_get_drvdata(pdev);
	struct vesper_load_job *job, *jtmp;
	struct vesper_pushed *p, *tmp;
	u32 ref;

	/* Open relay channels are closed with the host while the worker still runs. */
	vr_front_unbinding(fe);
	kthread_stop(fe->worker);
	/* Relay writers stop touching the region before it goes away. */
	vr_front_unbound(fe);
	/* A module init still running is waited for: its job thread holds fe. */
	list_for_each_entry_safe(job, jtmp, &fe->load_jobs, node)
		vf_reap_load_job(fe, job);

	for (ref = 0; ref < VESPER_GRANT_ENTRIES; ref++)
		WRITE_ONCE(vf_grant_entry(fe, ref)->state, VESPER_GRANT_STATE_FREE);
	smp_wmb();
	WRITE_ONCE(vf_hdr(fe)->guest_state, VESPER_GUEST_STATE_DOWN);
	smp_mb();

	if (fe->have_irq) {
		free_irq(pci_irq_vector(pdev, 0), fe);
		pci_free_irq_vectors(pdev);
	}
	pci_clear_master(pdev);
	memunmap(fe->shm);
	pci_iounmap(pdev, fe->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);

	list_for_each_entry_safe(p, tmp, &fe->pushed, node) {
		list_del(&p->node);
		kfree(p);
	}
	bitmap_free(fe->pages_map);
	kfree(fe->cmpl);
	kfree(fe->rsp);
	kfree(fe);
	pr_info(VESPER_DRV_NAME ": %s: unbound\n", pci_name(pdev));
}

static const struct pci_device_id vf_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },	/* ivshmem (plain or doorbell) */
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, vf_ids);

static struct pci_driver vf_driver = {
	.name = VESPER_DRV_NAME,
	.id_table = vf_ids,
	.probe = vf_probe,
	.remove = vf_remove,
};

static int __init vf_init(void)
{
	int ret = vesper_loader_init();

	if (ret)
		pr_err(VESPER_DRV_NAME ": loader unavailable (%d): load/unload will fail with -ENOSYS\n",
		       ret);
	ret = pci_register_driver(&vf_driver);
	if (ret)
		vesper_loader_exit();
	return ret;
}

static void __exit vf_exit(void)
{
	pci_unregister_driver(&vf_driver);
	vesper_loader_exit();
}

module_init(vf_init);
module_exit(vf_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper guest frontend (ivshmem-doorbell): pushed kernel probe modules");
MODULE_VERSION("1");
