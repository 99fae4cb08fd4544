/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internal interface between the frontend core (vesper_main.c) and the relay channels
 * (vesper_relay.c). Probe modules use include/vesper_relay_api.h instead.
 *
 * Threading: everything that touches the rings or the grant table runs in the
 * frontend's worker kthread. Relay open/close callers queue their channel with the
 * worker (vf_relay_kick) and wait; the worker posts the queued requests from its wait
 * loops (vr_pump) and hands relay answers to vr_response. When the caller *is* the
 * worker (a probe's init or exit run by OP_LOAD / OP_UNLOAD), it pumps the rings
 * itself through vf_wait_relay.
 */
#ifndef VESPER_RELAY_H
#define VESPER_RELAY_H

#include <linux/types.h>
#include <linux/sched.h>
#include "vesper_abi.h"

struct vesper_front;
struct vesper_relay;

/* ---- provided by vesper_main.c (worker-only unless noted) --------------------- */

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

/* ---- provided by vesper_relay.c ------------------------------------------------ */

/* A frontend bound. */
void vr_front_bound(struct vesper_front *fe);
/* A frontend is unbinding, its worker still runs: close its open channels (<= 2 s). */
void vr_front_unbinding(struct vesper_front *fe);
/* A frontend unbinds, its worker stopped, before unmapping: disconnect the rest. */
void vr_front_unbound(struct vesper_front *fe);

/* vesper_relay_open with the owner given by name (NULL = "vmlinux"). */
struct vesper_relay *vr_open_named(const char *module, const char *name,
				   size_t subbuf_size, size_t n_subbufs, unsigned int flags);

/* Worker: grant and post the requests of queued channels. */
void vr_pump(struct vesper_front *fe);

/*
 * Worker: a response of this generation that nobody in the core waits for. Returns
 * true if it was the answer to a relay request (and is now handled).
 */
bool vr_response(struct vesper_front *fe, const struct vesper_msg_header *h);

#endif /* VESPER_RELAY_H */
