/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The frontend's lowest layer (vesper_transport.c): the shared region as the protocol
 * lays it out (header, grant table, request and response rings, data area), the
 * data-area page allocator, grants, posting requests and waiting for answers. It names
 * no other file of the module: what the worker does while it waits, and responses no
 * wait loop expects, go up through struct vesper_front_ops (vesper_front.h). The relay
 * channels and the core both build on it; everything here is worker-only unless noted.
 *
 * Threading: everything that touches the rings or the grant table runs in the
 * frontend's worker kthread. Relay open/close callers queue their channel with the
 * worker (vf_relay_kick) and wait; the worker posts the queued requests from its wait
 * loops (vr_pump) and hands relay answers to vr_response. When the caller *is* the
 * worker (a probe's init or exit run by OP_LOAD / OP_UNLOAD), it pumps the rings
 * itself through vf_wait_relay.
 */
#ifndef VESPER_TRANSPORT_H
#define VESPER_TRANSPORT_H

#include <linux/types.h>
#include <linux/sched.h>
#include <linux/interrupt.h>
#include "vesper_abi.h"

struct vesper_front;

/* ---- for the relay channels and the core ------------------------------------- */

/* Pointer to region offset off (any context while the frontend is bound). */
void *vf_region_ptr(struct vesper_front *fe, u64 off);
/* BAR0 doorbell register (any context while the frontend is bound). */
void __iomem *vf_doorbell_reg(struct vesper_front *fe);
/* The worker thread of fe. */
struct task_struct *vf_worker_task(struct vesper_front *fe);
u32 vf_generation(struct vesper_front *fe);

/* Data-area page allocator (process context, any thread; spinlock inside). */
int vf_pages_alloc(struct vesper_front *fe, unsigned int npages, u64 *off);
void vf_pages_free(struct vesper_front *fe, u64 off, unsigned int npages);

/* Grants and requests: worker only. */
int vf_grant(struct vesper_front *fe, u64 offset, u32 len, u32 access, u32 owner);
void vf_revoke(struct vesper_front *fe, u32 ref);
int vf_post(struct vesper_front *fe, u32 kind, const void *payload, u32 len, u64 *id);

/* Any process context: relay work is queued, wake the worker. */
void vf_relay_kick(struct vesper_front *fe);

/*
 * Worker only: serve the rings (posting queued relay requests, dispatching answers)
 * until done(arg) is true, the timeout (jiffies) passes (-ETIMEDOUT) or the worker is
 * asked to stop (-ESHUTDOWN).
 */
int vf_wait_relay(struct vesper_front *fe, bool (*done)(void *arg), void *arg,
		  unsigned long timeout);

/* ---- for the core only (struct vesper_front is theirs) ----------------------- */

struct vesper_region_header *vf_hdr(struct vesper_front *fe);
struct vesper_grant_entry *vf_grant_entry(struct vesper_front *fe, u32 ref);
/* Bytes from the data area's start to the region's end. */
u64 vf_data_space(struct vesper_front *fe);
/* Sets up the data-area page allocator (probe; the bitmap is freed by remove). */
int vf_pages_setup(struct vesper_front *fe);
/* Start-up: both rings continue from where the host's indexes are now. */
void vf_rings_reset(struct vesper_front *fe);
/* Sleep for delay jiffies unless asked to stop. */
void vf_sleep(struct vesper_front *fe, unsigned long delay);
/* The device's interrupt: wakes the worker. */
irqreturn_t vf_irq(int irq, void *data);
/* The private copy of the last response popped (header, then payload). */
struct vesper_msg_header *vf_rsp_hdr(struct vesper_front *fe);
void *vf_rsp_payload(struct vesper_front *fe);
/*
 * Wait for the answer to request id of kind kind (timeout 0: forever); see
 * vesper_transport.c. Returns 0, -ETIMEDOUT, -ESHUTDOWN or -EPROTO.
 */
int vf_wait(struct vesper_front *fe, u64 id, u32 kind, unsigned long timeout,
	    u32 min_len);
/* Host status -> errno we pass on: negative errnos only, anything else is -EPROTO. */
int vf_host_error(s32 status);

#endif /* VESPER_TRANSPORT_H */
