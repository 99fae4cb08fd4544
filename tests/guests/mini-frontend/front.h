/* SPDX-License-Identifier: Apache-2.0 */
/*
 * front.h - the guest side of the Vesper control protocol (shared-abi/PROTOCOL.md):
 * start-up, the two rings, grants and host commands. One device, one instance.
 */
#ifndef MINI_FRONT_H
#define MINI_FRONT_H

#include <stdint.h>

#include "pci.h"
#include "vesper_abi.h"

/* What the hello says about this guest. */
#define MINI_KERNEL_RELEASE	"vesper-mini"
#define MINI_VERMAGIC		"vesper-mini 1 (mini frontend: no kernel, no modules)"
/* The name OP_LIST reports the frontend under (MODULE_FLAG_FRONTEND). */
#define MINI_MODULE_NAME	"vesper_mini"

/*
 * Data-area pages, fixed: this guest's few users never come and go. Offsets are
 * VESPER_DATA_AREA_OFFSET + page * VESPER_PAGE_SIZE.
 */
#define MINI_PAGE_MODLIST	0
#define MINI_PAGE_RELAY_CTRL	1
#define MINI_PAGE_RELAY_CONS	2
#define MINI_PAGE_RELAY_BUF	3	/* MINI_RELAY_SUBBUFS pages */
#define MINI_RELAY_SUBBUFS	4
#define MINI_RELAY_SUBBUF_SIZE	VESPER_PAGE_SIZE
#define MINI_DATA_PAGES		(MINI_PAGE_RELAY_BUF + MINI_RELAY_SUBBUFS)

/*
 * Binds to the device: checks the region (start-up step 1), forgets any previous life
 * of it and bumps the generation (step 2), posts the hello (step 3). Returns 0, or
 * -ENODEV when the region is not a ready Vesper region (then nothing was written).
 */
int front_start(const struct pci_vesper *dev);

/*
 * Serves the rings once: answers, commands, pending requests. Never waits. Returns
 * whether there was work: a response taken or dropped, or a request still to post.
 */
int front_poll(void);

/* Whether the hello was answered (relay requests may be posted). */
int front_up(void);

uint32_t front_generation(void);

/* Base address of data-area page `page`, or NULL without a region. */
void *front_page(unsigned int page);
uint64_t front_page_offset(unsigned int page);

/* A live grant of [offset, offset + len); returns its ref or -ENOSPC / -EINVAL. */
int front_grant(uint64_t offset, uint32_t len, uint32_t access, uint32_t owner);
/* Grants page-aligned guest RAM (GRANT_GUEST_FRAMES) if the host offers it. */
int front_grant_frames(const void *frames, uint32_t len, uint32_t access, uint32_t owner);
void front_revoke(uint32_t ref);

/* Posts one request; returns 0 and its id, or -ENOSPC while the ring is full. */
int front_post(uint32_t kind, const void *payload, uint32_t len, uint64_t *id);

/* Rings the host on vector (VESPER_VECTOR_CONTROL or VESPER_VECTOR_RELAY). */
void front_doorbell(uint32_t vector);

#endif /* MINI_FRONT_H */
