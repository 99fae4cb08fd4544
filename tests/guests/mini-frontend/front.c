// SPDX-License-Identifier: Apache-2.0
/*
 * front.c - the Vesper control protocol, guest side, for a program without a kernel:
 * the same start-up, rings, grants and command handling as guest-module/vesper_main.c,
 * driven by polling from one loop instead of a kernel thread and interrupts.
 *
 * Everything the host writes is untrusted: a response slot is copied once into
 * private memory and only the copy is parsed; ring indices and lengths are checked
 * before use. A request that cannot be posted (ring full) stays pending and is posted
 * by a later front_poll, so nothing here ever waits for the host.
 *
 * Commands: OP_LIST reports the frontend itself (one entry, granted like the Linux
 * frontend's list); OP_LOAD is refused (there is no kernel to load into); OP_UNLOAD
 * finds nothing to unload; OP_KMSG returns this program's own log; OP_CLOCK answers
 * with the calibrated clock, or is refused when there is none.
 */
#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "clock.h"
#include "console.h"
#include "front.h"
#include "lib.h"
#include "relay.h"

#define FRONTEND_VERSION	1
/* ivshmem BAR0 registers */
#define IVSHMEM_REG_IVPOSITION	8
#define IVSHMEM_REG_DOORBELL	12
#define IVSHMEM_PEER_HOST	0
/* The kernel's MODULE_STATE_LIVE, as OP_LIST entries carry a module's state. */
#define MODULE_STATE_LIVE	0
/* front_poll calls before a refused WAIT_COMMAND is posted again. */
#define FRONT_RETRY_POLLS	200000
/* Dropped responses reported on the console; the rest are only counted. */
#define FRONT_MAX_DROP_REPORTS	16

_Static_assert(sizeof(struct vesper_msg_header) + VESPER_SLOT_PAYLOAD_SIZE == VESPER_SLOT_SIZE,
	       "slot layout");
_Static_assert(sizeof(struct vesper_completion_request) <= VESPER_SLOT_PAYLOAD_SIZE,
	       "completion fits a slot");
_Static_assert(sizeof(struct vesper_hello_request) <= VESPER_SLOT_PAYLOAD_SIZE,
	       "hello fits a slot");
_Static_assert(VESPER_DATA_AREA_OFFSET + MINI_DATA_PAGES * VESPER_PAGE_SIZE <=
	       VESPER_MIN_REGION_SIZE, "data pages fit the smallest region");

enum front_state {
	FRONT_ABSENT,		/* no region bound */
	FRONT_HELLO,		/* hello posted (or to post), waiting for its answer */
	FRONT_UP,		/* serving commands */
	FRONT_FAILED,		/* the host refused the hello: idle */
};

/* Requests waiting for room in the request ring. */
#define NEED_HELLO	0x1
#define NEED_COMPLETION	0x2
#define NEED_WAIT	0x4

struct front {
	enum front_state state;
	uintptr_t regs;			/* BAR0 */
	uint8_t *shm;			/* BAR2 */
	uint64_t bar_size;
	uint64_t region_size;		/* min(BAR2 size, header region_size) */

	uint32_t generation;
	uint32_t req_prod;		/* our request producer */
	uint32_t rsp_cons;		/* our response consumer */
	uint64_t next_id;
	uint32_t need;			/* NEED_* */
	uint32_t retry_polls;		/* countdown before NEED_WAIT is acted on */
	uint64_t hello_id;
	uint64_t wait_id;		/* the standing WAIT_COMMAND, 0 if none */
	uint8_t grant_used[VESPER_GRANT_ENTRIES];
	uint32_t list_grant;		/* live OP_LIST grant or VESPER_GRANT_REF_NONE */
	int said_frames;		/* logged the first module list from guest RAM */
	uint64_t list_cmpl_id;		/* the completion that carries it */
	uint64_t dropped;		/* responses dropped (stale, malformed, unexpected) */

	/* Private copies: one response slot, the command, the completion being sent. */
	uint8_t rsp[VESPER_SLOT_SIZE] __attribute__((aligned(8)));
	struct vesper_command_response cmd;
	struct vesper_completion_request cmpl;
};

/* In .bss: zeroed at every entry, so a reset starts from scratch. */
static struct front fe;

/* ---- region access ------------------------------------------------------------ */

static struct vesper_region_header *hdr(void)
{
	return (struct vesper_region_header *)(fe.shm + VESPER_HEADER_OFFSET);
}

static struct vesper_grant_entry *grant_entry(uint32_t ref)
{
	return (struct vesper_grant_entry *)(fe.shm + VESPER_GRANT_TABLE_OFFSET) + ref;
}

static struct vesper_ring_control *ring(uint64_t ring_off)
{
	return (struct vesper_ring_control *)(fe.shm + ring_off);
}

/* Slots follow their ring's control page. */
static uint8_t *slot(uint64_t ring_off, uint32_t idx)
{
	return fe.shm + ring_off + VESPER_PAGE_SIZE +
	       (uint64_t)(idx % VESPER_RING_SLOTS) * VESPER_SLOT_SIZE;
}

/*
 * Copies n bytes out of shared memory once; the barrier keeps the compiler from
 * reading the source again in place of the copy.
 */
static void copy_from_shared(void *dst, const void *src, size_t n)
{
	memcpy(dst, src, n);
	barrier();
}

uint64_t front_page_offset(unsigned int page)
{
	return VESPER_DATA_AREA_OFFSET + (uint64_t)page * VESPER_PAGE_SIZE;
}

void *front_page(unsigned int page)
{
	if (!fe.shm || page >= MINI_DATA_PAGES)
		return NULL;
	return fe.shm + front_page_offset(page);
}

int front_up(void)
{
	return fe.state == FRONT_UP;
}

uint32_t front_generation(void)
{
	return fe.generation;
}

void front_doorbell(uint32_t vector)
{
	mmio_write32(fe.regs + IVSHMEM_REG_DOORBELL, (IVSHMEM_PEER_HOST << 16) | vector);
}

/* ---- grants ------------------------------------------------------------------- */

/*
 * Fills a free grant entry and makes it live: `where` is a region offset, or a
 * guest-physical address when `access` has VESPER_GRANT_GUEST_FRAMES.
 */
static int publish_grant(uint64_t where, uint32_t len, uint32_t access, uint32_t owner)
{
	struct vesper_grant_entry *g;

	for (uint32_t ref = 0; ref < VESPER_GRANT_ENTRIES; ref++) {
		if (fe.grant_used[ref])
			continue;
		g = grant_entry(ref);
		WRITE_ONCE(g->state, VESPER_GRANT_STATE_FREE);
		WRITE_ONCE(g->offset, where);
		WRITE_ONCE(g->len, len);
		WRITE_ONCE(g->access, access);
		WRITE_ONCE(g->owner, owner);
		WRITE_ONCE(g->generation, fe.generation);
		WRITE_ONCE(g->reserved, 0);
		/* The entry is complete before it becomes live. */
		wmb();
		WRITE_ONCE(g->state, VESPER_GRANT_STATE_ACTIVE);
		fe.grant_used[ref] = 1;
		return (int)ref;
	}
	return -ENOSPC;
}

int front_grant(uint64_t offset, uint32_t len, uint32_t access, uint32_t owner)
{
	if (offset < VESPER_DATA_AREA_OFFSET || offset > fe.region_size ||
	    len > fe.region_size - offset)
		return -EINVAL;
	return publish_grant(offset, len, access, owner);
}

/*
 * Grants guest RAM frames instead of a range of the region: only when the host offered
 * it (a VMM that owns guest RAM). The mini frontend runs identity-mapped, so a buffer's
 * address is its guest-physical address.
 */
int front_grant_frames(const void *frames, uint32_t len, uint32_t access, uint32_t owner)
{
	uint64_t gpa = (uint64_t)(uintptr_t)frames;

	if (!(READ_ONCE(hdr()->host_features) & VESPER_HOST_FEATURE_GUEST_FRAMES))
		return -EOPNOTSUPP;
	if (gpa % VESPER_PAGE_SIZE || !len || len % VESPER_PAGE_SIZE ||
	    len > VESPER_GRANT_FRAMES_MAX_LEN)
		return -EINVAL;
	return publish_grant(gpa, len, access | VESPER_GRANT_GUEST_FRAMES, owner);
}

void front_revoke(uint32_t ref)
{
	if (ref >= VESPER_GRANT_ENTRIES)
		return;
	WRITE_ONCE(grant_entry(ref)->state, VESPER_GRANT_STATE_FREE);
	/* Revoked before the range is looked at or reused. */
	mb();
	fe.grant_used[ref] = 0;
}

static void revoke_list_grant(void)
{
	if (fe.list_grant != VESPER_GRANT_REF_NONE) {
		front_revoke(fe.list_grant);
		fe.list_grant = VESPER_GRANT_REF_NONE;
	}
}

/* ---- rings -------------------------------------------------------------------- */

int front_post(uint32_t kind, const void *payload, uint32_t len, uint64_t *id)
{
	struct vesper_ring_control *rc = ring(VESPER_REQ_RING_OFFSET);
	struct vesper_msg_header h;
	uint32_t prod = fe.req_prod;
	uint8_t *s;

	if (len > VESPER_SLOT_PAYLOAD_SIZE)
		return -EINVAL;
	/* Host-written consumer: anything but 0..RING_SLOTS-1 behind us means "full". */
	if ((uint32_t)(prod - READ_ONCE(rc->consumer)) >= VESPER_RING_SLOTS)
		return -ENOSPC;
	rmb();

	memset(&h, 0, sizeof(h));
	h.kind = kind;
	h.len = len;
	h.id = ++fe.next_id;
	h.generation = fe.generation;
	s = slot(VESPER_REQ_RING_OFFSET, prod);
	memcpy(s, &h, sizeof(h));
	if (len)
		memcpy(s + sizeof(h), payload, len);
	/* Slot contents before the new producer index. */
	wmb();
	WRITE_ONCE(rc->producer, prod + 1);
	fe.req_prod = prod + 1;
	front_doorbell(VESPER_VECTOR_CONTROL);
	*id = h.id;
	return 0;
}

static void drop(const char *why, const struct vesper_msg_header *h)
{
	if (fe.dropped++ < FRONT_MAX_DROP_REPORTS)
		pr("vesper-mini: dropping response kind %#x id %lu generation %u: %s", h->kind,
		   (unsigned long)h->id, h->generation, why);
}

enum rsp_take {
	RSP_EMPTY,		/* nothing to take */
	RSP_DROPPED,		/* a slot was taken and dropped */
	RSP_TAKEN,		/* fe.rsp holds a response of ours with a sane length */
};

/* Takes the next response slot into fe.rsp; at most one slot per call. */
static enum rsp_take next_response(void)
{
	struct vesper_ring_control *rc = ring(VESPER_RSP_RING_OFFSET);
	struct vesper_msg_header *h = (struct vesper_msg_header *)fe.rsp;
	uint32_t prod = READ_ONCE(rc->producer);
	uint32_t avail = prod - fe.rsp_cons;

	if (!avail)
		return RSP_EMPTY;
	if (avail > VESPER_RING_SLOTS) {
		if (fe.dropped++ < FRONT_MAX_DROP_REPORTS)
			pr("vesper-mini: host response producer %u is %u ahead of consumer %u, skipping",
			   prod, avail, fe.rsp_cons);
		fe.rsp_cons = prod;
		WRITE_ONCE(rc->consumer, prod);
		return RSP_DROPPED;
	}
	rmb();
	copy_from_shared(fe.rsp, slot(VESPER_RSP_RING_OFFSET, fe.rsp_cons), VESPER_SLOT_SIZE);
	/* Done reading the slot before handing it back. */
	fe.rsp_cons++;
	WRITE_ONCE(rc->consumer, fe.rsp_cons);

	if (h->generation != fe.generation) {
		drop("not our generation", h);
		return RSP_DROPPED;
	}
	if (h->len > VESPER_SLOT_PAYLOAD_SIZE) {
		drop("length past the slot", h);
		return RSP_DROPPED;
	}
	return RSP_TAKEN;
}

static const struct vesper_msg_header *rsp_hdr(void)
{
	return (const struct vesper_msg_header *)fe.rsp;
}

static const void *rsp_payload(void)
{
	return fe.rsp + sizeof(struct vesper_msg_header);
}

/* ---- commands ----------------------------------------------------------------- */

static void fail(int error, uint32_t stage)
{
	fe.cmpl.error = error;
	fe.cmpl.stage = stage;
}

/* The module list when granted from guest RAM: one page of our own. */
static uint8_t list_frame[VESPER_PAGE_SIZE] __attribute__((aligned(VESPER_PAGE_SIZE)));

static void do_list(void)
{
	int frames = (READ_ONCE(hdr()->host_features) & VESPER_HOST_FEATURE_GUEST_FRAMES) != 0;
	struct vesper_module_entry *e =
		frames ? (void *)list_frame : front_page(MINI_PAGE_MODLIST);
	int ref;

	/* One entry: the frontend itself, as the Linux frontend lists vesper_front. */
	memset(e, 0, sizeof(*e));
	strscpy((char *)e->name, MINI_MODULE_NAME, sizeof(e->name));
	e->state = MODULE_STATE_LIVE;
	e->flags = VESPER_MODULE_FLAG_FRONTEND;
	/* A host that owns our RAM reads the list where it is: no copy into the region. */
	if (frames)
		ref = front_grant_frames(list_frame, sizeof(list_frame), VESPER_GRANT_READ,
					 VESPER_GRANT_OWNER_MODLIST);
	else
		ref = front_grant(front_page_offset(MINI_PAGE_MODLIST), sizeof(*e),
				  VESPER_GRANT_READ, VESPER_GRANT_OWNER_MODLIST);
	if (ref >= 0 && frames && !fe.said_frames) {
		pr("vesper-mini: module list granted from guest RAM (frames at %#lx)",
		   (unsigned long)(uintptr_t)list_frame);
		fe.said_frames = 1;
	}
	if (ref < 0)
		return fail(ref, VESPER_STAGE_LIST);
	fe.list_grant = (uint32_t)ref;
	fe.cmpl.data_grant = (uint32_t)ref;
	fe.cmpl.data_len = sizeof(*e);
}

static void do_unload(const char *name)
{
	if (!name[0] || fe.cmd.flags & ~VESPER_UNLOAD_FLAG_FORCE)
		return fail(-EINVAL, VESPER_STAGE_COMMAND);
	if (!strcmp(name, MINI_MODULE_NAME)) {
		pr("vesper-mini: refusing to unload the frontend itself");
		return fail(-EBUSY, VESPER_STAGE_DELETE_MODULE);
	}
	pr("vesper-mini: unload %s: no such module (the mini frontend has none)", name);
	fail(-ENOENT, VESPER_STAGE_DELETE_MODULE);
}

/* Executes fe.cmd into fe.cmpl and marks the completion for posting. */
static void run_command(void)
{
	char name[VESPER_MODULE_NAME_LEN];

	/* A list grant whose completion the host never answered: the page is ours again. */
	revoke_list_grant();

	memset(&fe.cmpl, 0, sizeof(fe.cmpl));
	fe.cmpl.command_id = fe.cmd.command_id;
	fe.cmpl.op = fe.cmd.op;
	fe.cmpl.data_grant = VESPER_GRANT_REF_NONE;
	strscpy(name, (const char *)fe.cmd.name, sizeof(name));

	switch (fe.cmd.op) {
	case VESPER_OP_LOAD:
		pr("vesper-mini: load %s (%lu bytes) refused: the mini frontend cannot load kernel modules",
		   name, (unsigned long)fe.cmd.image_size);
		fail(-EOPNOTSUPP, VESPER_STAGE_PREPARE);
		break;
	case VESPER_OP_UNLOAD:
		do_unload(name);
		break;
	case VESPER_OP_LIST:
		do_list();
		break;
	case VESPER_OP_KMSG:
		fe.cmpl.log_len = (uint32_t)log_tail((char *)fe.cmpl.log, sizeof(fe.cmpl.log));
		break;
	case VESPER_OP_CLOCK:
		if (!clock_calibrated()) {
			pr("vesper-mini: clock refused: no calibrated clock (no kvmclock, no TSC frequency in CPUID)");
			fail(-EOPNOTSUPP, VESPER_STAGE_COMMAND);
		}
		break;	/* guest_time_ns is stamped when the completion is posted */
	default:
		pr("vesper-mini: unknown command op %u", fe.cmd.op);
		fail(-EINVAL, VESPER_STAGE_COMMAND);
		break;
	}

	if (fe.cmpl.error) {
		pr("vesper-mini: command %lu (%s %s) failed at stage %u: %d",
		   (unsigned long)fe.cmpl.command_id, vesper_op_name(fe.cmpl.op), name, fe.cmpl.stage,
		   fe.cmpl.error);
		fe.cmpl.log_len = (uint32_t)log_tail((char *)fe.cmpl.log, sizeof(fe.cmpl.log));
	} else {
		fe.cmpl.stage = VESPER_STAGE_DONE;
	}
	fe.need |= NEED_COMPLETION;
}

/* ---- responses ---------------------------------------------------------------- */

static void on_hello(void)
{
	const struct vesper_msg_header *h = rsp_hdr();
	struct vesper_hello_response r;

	if (h->status) {
		pr("vesper-mini: host refused the hello: %d; frontend idle", h->status);
		fe.state = FRONT_FAILED;
		return;
	}
	if (h->len < sizeof(r)) {
		pr("vesper-mini: hello answer has %u payload bytes, need %zu; frontend idle",
		   h->len, sizeof(r));
		fe.state = FRONT_FAILED;
		return;
	}
	memcpy(&r, rsp_payload(), sizeof(r));
	wmb();
	WRITE_ONCE(hdr()->guest_state, VESPER_GUEST_STATE_UP);
	fe.state = FRONT_UP;
	fe.need |= NEED_WAIT;
	pr("vesper-mini: host v%u, generation %u, max chunk %u, host max image %lu",
	   r.host_version, fe.generation, r.max_chunk, (unsigned long)r.max_image_size);
	pr("vesper-mini: up");
	relay_start();
}

static void on_command(void)
{
	const struct vesper_msg_header *h = rsp_hdr();

	fe.wait_id = 0;
	if (h->status) {
		if (fe.dropped++ < FRONT_MAX_DROP_REPORTS)
			pr("vesper-mini: host answered WAIT_COMMAND with %d", h->status);
		fe.need |= NEED_WAIT;
		fe.retry_polls = FRONT_RETRY_POLLS;
		return;
	}
	if (h->len < offsetof(struct vesper_command_response, params)) {
		pr("vesper-mini: command of %u payload bytes is too short; waiting for the next",
		   h->len);
		fe.need |= NEED_WAIT;
		return;
	}
	/* Copy the command once; a short one keeps zeroes in the tail. */
	memset(&fe.cmd, 0, sizeof(fe.cmd));
	memcpy(&fe.cmd, rsp_payload(), MIN((size_t)h->len, sizeof(fe.cmd)));
	run_command();
}

static void on_response(void)
{
	const struct vesper_msg_header *h = rsp_hdr();

	if (fe.state == FRONT_HELLO && h->id == fe.hello_id &&
	    h->kind == (VESPER_REQ_HELLO | VESPER_RSP_FLAG))
		return on_hello();
	if (fe.state != FRONT_UP)
		return drop("frontend not up", h);
	if (fe.wait_id && h->id == fe.wait_id &&
	    h->kind == (VESPER_REQ_WAIT_COMMAND | VESPER_RSP_FLAG))
		return on_command();
	if (relay_response(h))
		return;
	if (h->kind == (VESPER_REQ_COMPLETION | VESPER_RSP_FLAG)) {
		/* The host copied the module list out (or answered a plain completion). */
		if (h->id == fe.list_cmpl_id)
			revoke_list_grant();
		return;
	}
	drop("unexpected", h);
}

/* ---- pending requests --------------------------------------------------------- */

static void post_pending(void)
{
	uint64_t id;

	if (fe.need & NEED_HELLO) {
		struct vesper_hello_request hello;

		memset(&hello, 0, sizeof(hello));
		hello.frontend_version = FRONTEND_VERSION;
		hello.nr_cpus = 1;
		hello.page_size = VESPER_PAGE_SIZE;
		hello.region_size = fe.bar_size;
		strscpy((char *)hello.kernel_release, MINI_KERNEL_RELEASE,
			sizeof(hello.kernel_release));
		strscpy((char *)hello.vermagic, MINI_VERMAGIC, sizeof(hello.vermagic));
		if (front_post(VESPER_REQ_HELLO, &hello, sizeof(hello), &id))
			return;
		fe.hello_id = id;
		fe.need &= ~NEED_HELLO;
		pr("vesper-mini: hello posted (generation %u)", fe.generation);
	}
	if (fe.state != FRONT_UP)
		return;
	if (fe.need & NEED_COMPLETION) {
		/* As late as possible: the host brackets it with its round trip. */
		fe.cmpl.guest_time_ns = clock_ns();
		if (front_post(VESPER_REQ_COMPLETION, &fe.cmpl, sizeof(fe.cmpl), &id))
			return;
		if (fe.list_grant != VESPER_GRANT_REF_NONE)
			fe.list_cmpl_id = id;
		fe.need &= ~NEED_COMPLETION;
		fe.need |= NEED_WAIT;
	}
	if (fe.need & NEED_WAIT) {
		if (fe.retry_polls) {
			fe.retry_polls--;
			return;
		}
		if (front_post(VESPER_REQ_WAIT_COMMAND, NULL, 0, &id))
			return;
		fe.wait_id = id;
		fe.need &= ~NEED_WAIT;
	}
}

int front_poll(void)
{
	enum rsp_take took = RSP_DROPPED;
	int busy = 0;

	if (fe.state == FRONT_ABSENT || fe.state == FRONT_FAILED)
		return 0;
	/* A ring's worth per call: a flooding host cannot starve the console. */
	for (unsigned int n = 0; n < VESPER_RING_SLOTS && took != RSP_EMPTY; n++) {
		took = next_response();
		if (took == RSP_TAKEN)
			on_response();
		if (took != RSP_EMPTY)
			busy = 1;
	}
	post_pending();
	if (fe.state == FRONT_UP)
		relay_poll();
	/* A request still waiting for ring room (or its retry) keeps the loop awake. */
	return busy || fe.need || relay_pending();
}

/* ---- start-up ----------------------------------------------------------------- */

/* Step 1: is this ivshmem device a Vesper region? */
static int check_region(void)
{
	uint64_t magic = READ_ONCE(hdr()->magic);
	uint32_t abi = READ_ONCE(hdr()->abi_version);
	uint32_t state = READ_ONCE(hdr()->host_state);
	uint64_t size = READ_ONCE(hdr()->region_size);

	if (magic != VESPER_REGION_MAGIC) {
		pr("vesper-mini: region magic %#lx is not Vesper's, not binding",
		   (unsigned long)magic);
		return -ENODEV;
	}
	if (abi != VESPER_ABI_VERSION) {
		pr("vesper-mini: Vesper ABI %u, this frontend speaks %u, not binding", abi,
		   VESPER_ABI_VERSION);
		return -ENODEV;
	}
	if (state != VESPER_HOST_STATE_READY) {
		pr("vesper-mini: Vesper host state %u is not ready, not binding", state);
		return -ENODEV;
	}
	fe.region_size = MIN(size, fe.bar_size);
	if (fe.bar_size < VESPER_MIN_REGION_SIZE || fe.region_size < VESPER_MIN_REGION_SIZE) {
		pr("vesper-mini: region of %lu bytes (BAR %lu) is below the %u minimum, not binding",
		   (unsigned long)size, (unsigned long)fe.bar_size, VESPER_MIN_REGION_SIZE);
		return -ENODEV;
	}
	if (size != fe.bar_size)
		pr("vesper-mini: header says %lu bytes, BAR2 has %lu; using %lu",
		   (unsigned long)size, (unsigned long)fe.bar_size,
		   (unsigned long)fe.region_size);
	return 0;
}

/* Step 2: forget any previous life of the region (ours before a reset, or Linux's). */
static void reset_region(void)
{
	uint32_t gen;

	/* New generation first: a host that then finds a grant gone sees a restart. */
	gen = READ_ONCE(hdr()->generation) + 1;
	if (!gen)
		gen = 1;
	fe.generation = gen;
	WRITE_ONCE(hdr()->generation, gen);
	WRITE_ONCE(hdr()->guest_features, 0);
	wmb();

	for (uint32_t ref = 0; ref < VESPER_GRANT_ENTRIES; ref++) {
		WRITE_ONCE(grant_entry(ref)->state, VESPER_GRANT_STATE_FREE);
		fe.grant_used[ref] = 0;
	}
	fe.list_grant = VESPER_GRANT_REF_NONE;

	/* Continue where the host is: a reboot leaves stale indices. */
	fe.req_prod = READ_ONCE(ring(VESPER_REQ_RING_OFFSET)->consumer);
	WRITE_ONCE(ring(VESPER_REQ_RING_OFFSET)->producer, fe.req_prod);
	fe.rsp_cons = READ_ONCE(ring(VESPER_RSP_RING_OFFSET)->producer);
	WRITE_ONCE(ring(VESPER_RSP_RING_OFFSET)->consumer, fe.rsp_cons);
	mb();
}

int front_start(const struct pci_vesper *dev)
{
	int ret;

	memset(&fe, 0, sizeof(fe));
	fe.list_grant = VESPER_GRANT_REF_NONE;
	fe.regs = (uintptr_t)dev->bar0;
	fe.shm = (uint8_t *)(uintptr_t)dev->bar2;
	fe.bar_size = dev->bar2_size;

	ret = check_region();
	if (ret) {
		fe.shm = NULL;
		return ret;
	}
	pr("vesper-mini: bound to Vesper region of %lu bytes, peer %u (IVPosition), polling",
	   (unsigned long)fe.region_size, mmio_read32(fe.regs + IVSHMEM_REG_IVPOSITION));
	reset_region();
	fe.state = FRONT_HELLO;
	fe.need = NEED_HELLO;
	post_pending();
	return 0;
}
