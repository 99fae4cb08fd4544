// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_exit_probe: a kprobe on do_exit that logs every task exit (comm, pid, exit
 * code). On load it proves the probe is live without any user space: it starts a
 * kernel thread that exits at once and checks that the probe saw it.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/atomic.h>
#include <linux/err.h>

static atomic_long_t vesper_exit_hits = ATOMIC_LONG_INIT(0);

static bool quiet;
module_param(quiet, bool, 0444);
MODULE_PARM_DESC(quiet, "count exits without logging each one");

static int vesper_exit_pre(struct kprobe *p, struct pt_regs *regs)
{
	atomic_long_inc(&vesper_exit_hits);
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
	long hits;
	int ret;

	ret = register_kprobe(&vesper_exit_kp);
	if (ret) {
		pr_err("vesper_exit_probe: register_kprobe(do_exit) failed: %d\n", ret);
		return ret;
	}

	hits = vesper_exit_selfcheck();
	if (hits <= 0) {
		unregister_kprobe(&vesper_exit_kp);
		pr_err("vesper_exit_probe: self-check failed (%ld): kprobe on do_exit saw no exit\n",
		       hits);
		return -EIO;
	}
	pr_info("vesper_exit_probe: kprobe on do_exit live at %pS (self-check hits=%lu, quiet=%d)\n",
		vesper_exit_kp.addr, (unsigned long)hits, quiet);
	return 0;
}

static void __exit vesper_exit_exit(void)
{
	unregister_kprobe(&vesper_exit_kp);
	pr_info("vesper_exit_probe: removed after %lu hits\n",
		(unsigned long)atomic_long_read(&vesper_exit_hits));
}

module_init(vesper_exit_init);
module_exit(vesper_exit_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe: log task exits through a kprobe on do_exit");
