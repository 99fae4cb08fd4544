/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The frontend's state, shared by its core files (vesper_transport.c,
 * vesper_commands.c, vesper_main.c): struct vesper_front with the structs it owns, the
 * frontend's limits, and struct vesper_front_ops, the upcalls the transport makes into
 * the core. The relay channels see struct vesper_front only as an opaque pointer
 * (vesper_transport.h).
 */
#ifndef VESPER_FRONT_H
#define VESPER_FRONT_H

#include <linux/types.h>
#include <linux/list.h>
#include <linux/pci.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/atomic.h>

#include "vesper_abi.h"
#include "vesper_transport.h"

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

/*
 * What the transport calls up into the core for, so that vesper_transport.c names no
 * file above it: the work the worker does while it waits (queued relay requests,
 * finished loads; called only once HELLO is answered), and a response of our generation
 * that no wait loop expects (relay answers, the list grant's completion ack).
 */
struct vesper_front_ops {
	void (*pump)(struct vesper_front *fe);
	void (*stray)(struct vesper_front *fe, const struct vesper_msg_header *h);
};

struct vesper_front {
	const struct vesper_front_ops *ops;	/* set at probe, before the worker starts */
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

#endif /* VESPER_FRONT_H */
