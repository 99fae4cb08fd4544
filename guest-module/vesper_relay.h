/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the relay channels (vesper_relay.c) offer the frontend core (vesper_main.c):
 * binding and unbinding, posting queued channels and taking relay answers. Probe
 * modules use include/vesper_relay_api.h instead; the relay itself uses only the
 * transport (vesper_transport.h), never the core.
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
