// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_exit_probe: a kprobe on do_exit that logs every task exit (comm, pid, exit
 * code). On load it proves the probe is live without any user space: it starts a
 * kernel thread that exits at once and checks that the probe saw it.
 *
 * Watched tasks (watch_comm=name[,name...] and/or watch_pid=tgid[,tgid...]) are also
 * reported to the host through relay channel "exit" as urgent RECORD_EXIT records.
 * Only the thread-group leader's do_exit is reported: a process produces one record
 * however many threads it has, and for a group exit (exit_group(2), a fatal signal)
 * the leader's do_exit carries the group exit code (do_group_exit passes it to every
 * thread). The code is do_exit's argument, as wait(2) encodes it: signal in the low 7
 * bits (9 for SIGKILL), exit status in bits 8-15. A leader that leaves early with
 * pthread_exit while other threads go on is reported then, with code 0.
 * Without a frontend (no relay channel) the probe still loads and only logs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/atomic.h>
#include <linux/err.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "vesper_relay_api.h"

#define VESPER_EXIT_MAX_WATCH 16

static atomic_long_t vesper_exit_hits = ATOMIC_LONG_INIT(0);

static bool quiet;
module_param(quiet, bool, 0444);
MODULE_PARM_DESC(quiet, "count exits without logging each one");

static char *watch_comm;
module_param(watch_comm, charp, 0444);
MODULE_PARM_DESC(watch_comm, "comma-separated task names whose exits go to the host");

static int watch_pid[VESPER_EXIT_MAX_WATCH];
static int n_watch_pid;
module_param_array(watch_pid, int, &n_watch_pid, 0444);
MODULE_PARM_DESC(watch_pid, "thread-group ids whose exits go to the host");

/* watch_comm split up at load; read-only afterwards. */
static char vesper_exit_comms[VESPER_EXIT_MAX_WATCH][TASK_COMM_LEN];
static int vesper_exit_n_comms;

static struct vesper_relay *vesper_exit_chan;
static atomic_long_t vesper_exit_reported = ATOMIC_LONG_INIT(0);

static int vesper_exit_parse_comms(void)
{
	char *copy, *cur, *tok;

	if (!watch_comm || !watch_comm[0])
		return 0;
	copy = kstrdup(watch_comm, GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	cur = copy;
	while ((tok = strsep(&cur, ",")) != NULL) {
		if (!tok[0])
			continue;
		if (vesper_exit_n_comms == VESPER_EXIT_MAX_WATCH) {
			pr_warn("vesper_exit_probe: more than %d watch_comm names, ignoring %s\n",
				VESPER_EXIT_MAX_WATCH, tok);
			continue;
		}
		/* Task names are cut to TASK_COMM_LEN - 1 like the kernel cuts comm. */
		strscpy(vesper_exit_comms[vesper_exit_n_comms++], tok, TASK_COMM_LEN);
	}
	kfree(copy);
	return 0;
}

static bool vesper_exit_watched(struct task_struct *t)
{
	int i;

	for (i = 0; i < n_watch_pid; i++)
		if (watch_pid[i] > 0 && task_tgid_nr(t) == watch_pid[i])
			return true;
	for (i = 0; i < vesper_exit_n_comms; i++)
		if (!strncmp(t->comm, vesper_exit_comms[i], TASK_COMM_LEN))
			return true;
	return false;
}

static void vesper_exit_report(long code)
{
	struct vesper_exit_record rec;
	int ret = -ENODEV;

	memset(&rec, 0, sizeof(rec));
	rec.pid = task_tgid_nr(current);
	rec.tid = task_pid_nr(current);
	rec.exit_code = (int)code;
	rec.signal = code & 0x7f;
	rec.status = (code >> 8) & 0xff;
	memcpy(rec.comm, current->comm, sizeof(rec.comm));
	rec.comm[sizeof(rec.comm) - 1] = '\0';
	if (vesper_exit_chan)
		ret = vesper_relay_write(vesper_exit_chan, VESPER_RECORD_EXIT,
					 VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	if (!ret)
		atomic_long_inc(&vesper_exit_reported);
	pr_info_ratelimited("vesper_exit_probe: watched exit comm=%s pid=%d tid=%d code=%#x signal=%d status=%d relay=%d\n",
			    rec.comm, rec.pid, rec.tid, rec.exit_code, rec.signal, rec.status,
			    ret);
}

static int vesper_exit_pre(struct kprobe *p, struct pt_regs *regs)
{
	atomic_long_inc(&vesper_exit_hits);
	if ((n_watch_pid || vesper_exit_n_comms) && thread_group_leader(current) &&
	    vesper_exit_watched(current))
		vesper_exit_report((long)regs->di);
	if (quiet)
		return 0;
	pr_info_ratelimited("vesper_exit_probe: exit comm=%s pid=%d code=%ld\n",
			    current->comm, task_pid_nr(current), (long)regs->di);
	return 0;
}

static struct kprobe vesper_exit_kp = {
	.symbol_name = "do_exit",
	.pre_handler = vesper_exit_pre,
};

static int vesper_exit_selfcheck_fn(void *data)
{
	return 0;
}

/* Make one kernel thread go through do_exit; returns the hits it caused. */
static long vesper_exit_selfcheck(void)
{
	long before = atomic_long_read(&vesper_exit_hits);
	struct task_struct *t;

	t = kthread_create(vesper_exit_selfcheck_fn, NULL, "vesper-exit-chk");
	if (IS_ERR(t))
		return PTR_ERR(t);
	/* The thread may exit before kthread_stop looks at it: keep it pinned. */
	get_task_struct(t);
	wake_up_process(t);
	/* Returns once the thread has passed through do_exit (its vfork_done). */
	kthread_stop(t);
	put_task_struct(t);
	return atomic_long_read(&vesper_exit_hits) - before;
}

static int __init vesper_exit_init(void)
{
	struct vesper_relay *chan;
	long hits;
	int ret;

	ret = vesper_exit_parse_comms();
	if (ret)
		return ret;

	chan = vesper_relay_open(THIS_MODULE, "exit", 4096, 4, 0);
	if (IS_ERR(chan)) {
		pr_warn("vesper_exit_probe: relay channel \"exit\" unavailable (%ld); watched exits are only logged\n",
			PTR_ERR(chan));
		chan = NULL;
	}
	vesper_exit_chan = chan;

	ret = register_kprobe(&vesper_exit_kp);
	if (ret) {
		pr_err("vesper_exit_probe: register_kprobe(do_exit) failed: %d\n", ret);
		vesper_relay_close(vesper_exit_chan);
		return ret;
	}

	hits = vesper_exit_selfcheck();
	if (hits <= 0) {
		unregister_kprobe(&vesper_exit_kp);
		vesper_relay_close(vesper_exit_chan);
		pr_err("vesper_exit_probe: self-check failed (%ld): kprobe on do_exit saw no exit\n",
		       hits);
		return -EIO;
	}
	pr_info("vesper_exit_probe: kprobe on do_exit live at %pS (self-check hits=%lu, quiet=%d)\n",
		vesper_exit_kp.addr, (unsigned long)hits, quiet);
	pr_info("vesper_exit_probe: watching %d comm(s), %d pid(s); relay channel \"exit\" %s\n",
		vesper_exit_n_comms, n_watch_pid, chan ? "connected" : "absent");
	return 0;
}

static void __exit vesper_exit_exit(void)
{
	unregister_kprobe(&vesper_exit_kp);
	vesper_relay_close(vesper_exit_chan);
	pr_info("vesper_exit_probe: removed after %lu hits\n",
		(unsigned long)atomic_long_read(&vesper_exit_hits));
}

module_init(vesper_exit_init);
module_exit(vesper_exit_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe: log task exits through a kprobe on do_exit, report watched ones");
