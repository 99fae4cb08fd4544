// SPDX-License-Identifier: Apache-2.0
/*
 * relay.c - one relay channel whose buffer lives in the shared region, so the host
 * reads records where they were written (PROTOCOL.md, "Relay channels").
 *
 * Layout (fixed data-area pages, see front.h):
 *   control area   1 x vesper_relay_buf_control, then n_subbufs x u32 padding   READ
 *   consumer area  1 x vesper_relay_consumer (the host's only writes)           READ|WRITE
 *   buffer         n_subbufs x subbuf_size bytes                                READ
 * Each grant is exactly the size the host checks. Only `consumed` is ever read back
 * from the consumer area; a host writing garbage there can only cost records.
 */
#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "clock.h"
#include "console.h"
#include "front.h"
#include "lib.h"
#include "relay.h"

#define RELAY_CHANNEL_ID	1
#define RELAY_CPUS		1

#define RELAY_CTRL_LEN \
	(RELAY_CPUS * sizeof(struct vesper_relay_buf_control) + \
	 RELAY_CPUS * MINI_RELAY_SUBBUFS * sizeof(uint32_t))
#define RELAY_CONS_LEN	(RELAY_CPUS * sizeof(struct vesper_relay_consumer))
#define RELAY_BUF_LEN	(MINI_RELAY_SUBBUFS * MINI_RELAY_SUBBUF_SIZE)

_Static_assert(RELAY_CTRL_LEN <= VESPER_PAGE_SIZE, "control area fits its page");
_Static_assert(RELAY_CONS_LEN <= VESPER_PAGE_SIZE, "consumer area fits its page");
_Static_assert(MINI_RELAY_SUBBUF_SIZE % VESPER_PAGE_SIZE == 0 &&
	       MINI_RELAY_SUBBUF_SIZE >= VESPER_RELAY_MIN_SUBBUF_SIZE &&
	       MINI_RELAY_SUBBUF_SIZE <= VESPER_RELAY_MAX_SUBBUF_SIZE, "sub-buffer size");
_Static_assert(MINI_RELAY_SUBBUFS >= 2 && MINI_RELAY_SUBBUFS <= VESPER_RELAY_MAX_SUBBUFS,
	       "sub-buffer count");
_Static_assert(sizeof(struct vesper_record_header) == 24, "record header");

enum relay_state {
	RELAY_CLOSED,		/* nothing granted */
	RELAY_QUEUED,		/* granted, open request waiting for ring room */
	RELAY_OPENING,		/* open request posted */
	RELAY_OPEN,		/* host accepted: records may be written */
};

struct relay {
	enum relay_state state;
	uint64_t open_id;
	uint32_t grant_ctrl, grant_cons, grant_buf;
	struct vesper_relay_buf_control *ctrl;
	uint32_t *padding;
	struct vesper_relay_consumer *cons;
	uint8_t *buf;

	/* Writer state, private. */
	uint32_t produced;	/* P: sub-buffers produced (free-running) */
	uint32_t committed;	/* C: bytes committed in sub-buffer P % n_subbufs */
	uint64_t seq;
	uint64_t written;
	uint64_t dropped;
};

static struct relay rl;

static void revoke_all(void)
{
	front_revoke(rl.grant_ctrl);
	front_revoke(rl.grant_cons);
	front_revoke(rl.grant_buf);
	rl.grant_ctrl = rl.grant_cons = rl.grant_buf = VESPER_GRANT_REF_NONE;
	rl.state = RELAY_CLOSED;
}

static int grant_all(void)
{
	const uint32_t rd = VESPER_GRANT_READ, own = VESPER_GRANT_OWNER_RELAY;
	int ref;

	ref = front_grant(front_page_offset(MINI_PAGE_RELAY_CTRL), RELAY_CTRL_LEN, rd, own);
	if (ref < 0)
		return ref;
	rl.grant_ctrl = (uint32_t)ref;
	/* The consumer area is zero when the host first sees it. */
	memset(rl.cons, 0, RELAY_CONS_LEN);
	wmb();
	ref = front_grant(front_page_offset(MINI_PAGE_RELAY_CONS), RELAY_CONS_LEN,
			  rd | VESPER_GRANT_WRITE, own);
	if (ref < 0)
		return ref;
	rl.grant_cons = (uint32_t)ref;
	ref = front_grant(front_page_offset(MINI_PAGE_RELAY_BUF), RELAY_BUF_LEN, rd, own);
	if (ref < 0)
		return ref;
	rl.grant_buf = (uint32_t)ref;
	return 0;
}

void relay_start(void)
{
	int ret;

	memset(&rl, 0, sizeof(rl));
	rl.grant_ctrl = rl.grant_cons = rl.grant_buf = VESPER_GRANT_REF_NONE;
	rl.ctrl = front_page(MINI_PAGE_RELAY_CTRL);
	rl.padding = (uint32_t *)(rl.ctrl + RELAY_CPUS);
	rl.cons = front_page(MINI_PAGE_RELAY_CONS);
	rl.buf = front_page(MINI_PAGE_RELAY_BUF);
	memset(rl.ctrl, 0, RELAY_CTRL_LEN);

	ret = grant_all();
	if (ret) {
		pr("vesper-mini: relay %s/%s: out of grants (%d)", MINI_RELAY_MODULE,
		   MINI_RELAY_NAME, ret);
		revoke_all();
		return;
	}
	rl.state = RELAY_QUEUED;
	relay_poll();
}

void relay_poll(void)
{
	struct vesper_relay_open_request req;

	if (rl.state != RELAY_QUEUED)
		return;
	memset(&req, 0, sizeof(req));
	req.channel_id = RELAY_CHANNEL_ID;
	req.flags = 0;	/* no overwrite: a full buffer drops new records */
	req.subbuf_size = MINI_RELAY_SUBBUF_SIZE;
	req.n_subbufs = MINI_RELAY_SUBBUFS;
	req.n_cpus = RELAY_CPUS;
	req.control_grant = rl.grant_ctrl;
	req.consumer_grant = rl.grant_cons;
	strscpy((char *)req.module, MINI_RELAY_MODULE, sizeof(req.module));
	strscpy((char *)req.name, MINI_RELAY_NAME, sizeof(req.name));
	for (size_t cpu = 0; cpu < ARRAY_SIZE(req.buffer_grants); cpu++)
		req.buffer_grants[cpu] = VESPER_GRANT_REF_NONE;
	req.buffer_grants[0] = rl.grant_buf;
	if (front_post(VESPER_REQ_RELAY_OPEN, &req, sizeof(req), &rl.open_id))
		return;	/* ring full: next poll */
	rl.state = RELAY_OPENING;
}

int relay_pending(void)
{
	return rl.state == RELAY_QUEUED;
}

int relay_response(const struct vesper_msg_header *h)
{
	/* Close is never posted: any other relay answer is the caller's to drop. */
	if (h->kind != (VESPER_REQ_RELAY_OPEN | VESPER_RSP_FLAG) ||
	    rl.state != RELAY_OPENING || h->id != rl.open_id)
		return 0;
	if (h->status) {
		pr("vesper-mini: relay %s/%s: host refused the channel: %d", MINI_RELAY_MODULE,
		   MINI_RELAY_NAME, h->status);
		revoke_all();
		return 1;
	}
	rl.state = RELAY_OPEN;
	pr("vesper-mini: relay channel %u %s/%s open: %u CPU x %u x %u bytes", RELAY_CHANNEL_ID,
	   MINI_RELAY_MODULE, MINI_RELAY_NAME, RELAY_CPUS, MINI_RELAY_SUBBUFS,
	   MINI_RELAY_SUBBUF_SIZE);
	return 1;
}

static void count_drop(void)
{
	rl.dropped++;
	WRITE_ONCE(rl.ctrl->dropped, rl.dropped);
}

static uint32_t round_up_record(uint32_t n)
{
	return (n + VESPER_RECORD_ALIGN - 1) & ~(uint32_t)(VESPER_RECORD_ALIGN - 1);
}

int relay_write(uint16_t rtype, uint16_t flags, const void *payload, size_t len)
{
	const uint32_t n = MINI_RELAY_SUBBUFS, subbuf = MINI_RELAY_SUBBUF_SIZE;
	struct vesper_record_header rec;
	uint32_t size, pad;
	uint8_t *dst;

	if (rl.state != RELAY_OPEN)
		return -ENODEV;
	/* Step 1: the record must fit a sub-buffer. */
	if (len > subbuf - sizeof(rec)) {
		count_drop();
		return -E2BIG;
	}
	size = round_up_record((uint32_t)(sizeof(rec) + len));

	/* Step 2: switch to the next sub-buffer. */
	if (rl.committed + size > subbuf) {
		uint32_t consumed = READ_ONCE(rl.cons->consumed);

		if ((uint32_t)(rl.produced + 1 - consumed) >= n) {
			count_drop();
			return -ENOSPC;
		}
		WRITE_ONCE(rl.padding[rl.produced % n], subbuf - rl.committed);
		rl.produced++;
		rl.committed = 0;
		wmb();	/* padding before the position that covers it */
		WRITE_ONCE(rl.ctrl->position, (uint64_t)rl.produced << 32);
		front_doorbell(VESPER_VECTOR_RELAY);
	}

	/* Step 3: the record. */
	dst = rl.buf + (size_t)(rl.produced % n) * subbuf + rl.committed;
	memset(&rec, 0, sizeof(rec));
	rec.len = (uint32_t)(sizeof(rec) + len);
	rec.rtype = rtype;
	rec.flags = flags;
	rec.seq = rl.seq++;
	rec.timestamp_ns = clock_ns();
	memcpy(dst, &rec, sizeof(rec));
	if (len)
		memcpy(dst + sizeof(rec), payload, len);
	pad = size - rec.len;
	if (pad)
		memset(dst + rec.len, 0, pad);
	rl.committed += size;
	rl.written++;

	/* Step 4: publish with one 64-bit store. */
	wmb();
	WRITE_ONCE(rl.ctrl->position, ((uint64_t)rl.produced << 32) | rl.committed);
	WRITE_ONCE(rl.ctrl->written, rl.written);
	WRITE_ONCE(rl.ctrl->dropped, rl.dropped);

	/* Step 5. */
	if (flags & VESPER_RECORD_FLAG_URGENT)
		front_doorbell(VESPER_VECTOR_RELAY);
	return 0;
}
