/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Vesper relay channels: the API probe modules use to send records to the host
 * (exported by vesper_front.ko, EXPORT_SYMBOL_GPL). Layout and protocol:
 * shared-abi/PROTOCOL.md, "Relay channels (Probe Listener)".
 *
 * A channel has one buffer per possible CPU (n_subbufs x subbuf_size bytes each) in
 * the shared region; a record is written into the buffer of the CPU the writer runs
 * on, with interrupts off, so writers never share a lock with the code they interrupt.
 *
 * Build a probe against it: ccflags-y += -I<repo>/guest-module/include and
 * KBUILD_EXTRA_SYMBOLS=<repo>/guest-module/Module.symvers (see probes/Makefile).
 */
#ifndef VESPER_RELAY_API_H
#define VESPER_RELAY_API_H

#include <linux/types.h>
#include "vesper_abi.h"

struct module;
struct vesper_relay;		/* opaque */
struct rchan;
struct rchan_buf;

/*
 * Open channel name (1..63 chars) for module owner (its name is sent to the host;
 * NULL = "vmlinux"). subbuf_size: multiple of 4096 in [RELAY_MIN_SUBBUF_SIZE,
 * RELAY_MAX_SUBBUF_SIZE]; n_subbufs in [2, RELAY_MAX_SUBBUFS]; flags RELAY_FLAG_*.
 * Process context, may sleep (up to ~10 s waiting for the host). Returns the channel
 * or ERR_PTR: -EINVAL (arguments), -ENODEV (no frontend bound), -ENOSPC (no region
 * pages or grants left), -ETIMEDOUT (no host answer), or the host's error.
 * The owner must vesper_relay_close() every channel before it unloads.
 */
struct vesper_relay *vesper_relay_open(struct module *owner, const char *name,
				       size_t subbuf_size, size_t n_subbufs,
				       unsigned int flags);

/*
 * Write one record (header + len payload bytes) into the current CPU's buffer. Any
 * context: process, softirq, hard IRQ, kprobe handlers, the panic path. Never sleeps.
 * Returns 0; -ENOSPC (buffer full, no-overwrite mode; counted as dropped); -E2BIG
 * (record larger than a sub-buffer; dropped); -EBUSY (NMI context; dropped); -ENODEV
 * (channel not connected: closed, or the frontend unbound); -EINVAL (NULL/ERR channel).
 * flags: RECORD_FLAG_URGENT rings the host at once.
 */
int vesper_relay_write(struct vesper_relay *r, u16 rtype, u16 flags,
		       const void *payload, size_t len);

/*
 * Close the channel: stop writers, let the host read what is left, free the region
 * pages. Process context, may sleep. Accepts NULL and ERR_PTR values (no-op).
 */
void vesper_relay_close(struct vesper_relay *r);

/* Totals over all CPU buffers: records written and dropped. Either pointer may be NULL. */
void vesper_relay_stats(struct vesper_relay *r, u64 *written, u64 *dropped);

/*
 * Relayfs compatibility: export a kernel relay channel (relay_open()) to the host.
 * Pass virtrelay_subbuf_start_callback as the channel's subbuf_start callback; every
 * finished relay sub-buffer is then copied into a Vesper channel as one RECORD_RAW
 * record. relay_export_start opens that channel (named after chan's base filename, or
 * modname) and returns 0 or a negative errno; relay_export_stop closes it. The
 * callback keeps relayfs' default behaviour (returns 0 when the buffer is full).
 */
int relay_export_start(struct rchan *chan, const char *modname);
void relay_export_stop(const char *modname);
int virtrelay_subbuf_start_callback(struct rchan_buf *buf, void *subbuf,
				    void *prev_subbuf, size_t prev_padding);

#endif /* VESPER_RELAY_API_H */
