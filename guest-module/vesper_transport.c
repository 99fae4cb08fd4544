// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_transport: the frontend's lowest layer. Accessors for the shared region as
 * shared-abi/PROTOCOL.md lays it out, the first-fit page allocator of the data area,
 * grant entries, and the rings: posting a request (waiting while the ring is full),
 * copying each response slot once into private memory, dropping other generations and
 * insane lengths, and the wait loops the worker serves the rings from. It names no other
 * file of the module; its upcalls into the core go through fe->ops.
 */
#include <linux/kernel.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/err.h>
#include <linux/bitmap.h>
#include <linux/spinlock.h>
#include <linux/atomic.h>

#include "vesper_front.h"

/* ---- region accessors ------------------------------------------------------- */

struct vesper_region_header *vf_hdr(struct vesper_front *fe)
{
	return fe->shm + VESPER_HEADER_OFFSET;
}

struct vesper_grant_entry *vf_grant_entry(struct vesper_front *fe, u32 ref)
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

u64 vf_data_space(struct vesper_front *fe)
{
	return fe->region_size - VESPER_DATA_AREA_OFFSET;
}

/* ---- data-area pages -------------------------------------------------------- */

/*
 * Staging chunks, module lists and relay channels all live in the data area; this
 * first-fit allocator over its 4 KiB pages keeps them apart. Process context only.
 */
int vf_pages_setup(struct vesper_front *fe)
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
void vf_sleep(struct vesper_front *fe, unsigned long delay)
{
	wait_event_interruptible_timeout(fe->wq, kthread_should_stop(), delay);
}

irqreturn_t vf_irq(int irq, void *data)
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

/* ---- rings -------------------------------------------------------------------- */

/* Start-up: both rings continue from where the host's indexes are now. */
void vf_rings_reset(struct vesper_front *fe)
{
	fe->req_prod = READ_ONCE(vf_req_ring(fe)->consumer);
	WRITE_ONCE(vf_req_ring(fe)->producer, fe->req_prod);
	fe->rsp_cons = READ_ONCE(vf_rsp_ring(fe)->producer);
	WRITE_ONCE(vf_rsp_ring(fe)->consumer, fe->rsp_cons);
}

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
	iowrite32((0 << 16) | 0, vf_doorbell_reg(fe));
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

struct vesper_msg_header *vf_rsp_hdr(struct vesper_front *fe)
{
	return (struct vesper_msg_header *)fe->rsp;
}

void *vf_rsp_payload(struct vesper_front *fe)
{
	return fe->rsp + sizeof(struct vesper_msg_header);
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

/* What the worker does while it waits: the core's queued work (relay requests, loads). */
static void vf_pump(struct vesper_front *fe)
{
	if (!fe->up)
		return;
	fe->ops->pump(fe);
}

/*
 * Wait for the answer to request id of kind kind. timeout 0 waits forever. On success
 * the response is in fe->rsp; its header len is <= SLOT_PAYLOAD_SIZE and, when status
 * is 0, >= min_len. Returns 0, -ETIMEDOUT, -ESHUTDOWN, or -EPROTO (short payload).
 * Meanwhile posts queued relay requests and finished loads' completions, and handles
 * their answers.
 */
int vf_wait(struct vesper_front *fe, u64 id, u32 kind, unsigned long timeout,
		   u32 min_len)
{
	unsigned long deadline = jiffies + timeout;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);

	for (;;) {
		vf_pump(fe);
		while (vf_next_rsp(fe)) {
			if (h->id != id || h->kind != (kind | VESPER_RSP_FLAG)) {
				fe->ops->stray(fe, h);
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
			fe->ops->stray(fe, h);
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
int vf_host_error(s32 status)
{
	if (status < 0 && status >= -MAX_ERRNO)
		return status;
	return -EPROTO;
}
