/* SPDX-License-Identifier: Apache-2.0 */
/*
 * relay.h - the mini frontend's one relay channel ("vesper_mini"/"hand": 1 CPU, typed
 * records, no overwrite), laid out and written as guest-module/vesper_relay.c does.
 */
#ifndef MINI_RELAY_H
#define MINI_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "vesper_abi.h"

#define MINI_RELAY_MODULE	"vesper_mini"
#define MINI_RELAY_NAME		"hand"

/* The frontend is up: grant the channel's pages and ask the host to open it. */
void relay_start(void);

/* Posts a queued open request once the ring has room. */
void relay_poll(void);

/* Whether an open request is still waiting for ring room. */
int relay_pending(void);

/* Handles the answer to our open request; returns 0 if h is not that. */
int relay_response(const struct vesper_msg_header *h);

/*
 * Writes one record (PROTOCOL.md "Writer"). Returns 0, -ENODEV (channel not open),
 * -E2BIG or -ENOSPC (every sub-buffer unconsumed: the record is dropped and counted).
 */
int relay_write(uint16_t rtype, uint16_t flags, const void *payload, size_t len);

#endif /* MINI_RELAY_H */
