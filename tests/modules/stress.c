// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_stress: test fixture for relay channels. Opens channel "stress" (subbuf_size,
 * n_subbufs, overwrite as given) and, from a kernel thread (insmod returns at once),
 * writes n RECORD_STRESS records of 64 bytes with their header (index 0..n-1,
 * total n). Without overwrite a full buffer (-ENOSPC) is retried after ~1 ms until the
 * record fits, so exactly n records arrive; with overwrite nothing is retried.
 * run=0 opens the channel and writes nothing.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/delay.h>
#include <linux/sched.h>
#include <linux/err.h>

#include "vesper_relay_api.h"

static unsigned long n = 1000;
module_param(n, ulong, 0444);
MODULE_PARM_DESC(n, "records to write (default 1000)");

static bool overwrite;
module_param(overwrite, bool, 0444);
MODULE_PARM_DESC(overwrite, "open the channel in overwrite (flight recorder) mode");

static uint subbuf_size = 4096;
module_param(subbuf_size, uint, 0444);
MODULE_PARM_DESC(subbuf_size, "sub-buffer size in bytes (default 4096)");

static uint n_subbufs = 4;
module_param(n_subbufs, uint, 0444);
MODULE_PARM_DESC(n_subbufs, "sub-buffers per CPU buffer (default 4)");

static bool run = true;
module_param(run, bool, 0444);
MODULE_PARM_DESC(run, "write the records (default 1)");

static struct vesper_relay *stress_chan;
static struct task_struct *stress_thread;

static int stress_fn(void *data)
{
	struct vesper_stress_record rec;
	u64 i = 0, written = 0, retries = 0, dropped = 0;
	int ret;

	memset(&rec, 0, sizeof(rec));
	while (i < n && !kthread_should_stop()) {
		rec.index = i;
		rec.total = n;
		ret = vesper_relay_write(stress_chan, VESPER_RECORD_STRESS, 0, &rec, sizeof(rec));
		if (!ret) {
			written++;
			i++;
		} else if (ret == -ENOSPC && !overwrite) {
			retries++;
			usleep_range(1000, 1500);
		} else if (ret == -ENODEV) {
			pr_warn("vesper_stress: channel disconnected after %llu records\n", written);
			break;
		} else {
			i++;	/* overwrite mode (or another error): never retried */
		}
		cond_resched();
	}
	vesper_relay_stats(stress_chan, NULL, &dropped);
	pr_info("vesper_stress: wrote %llu records (dropped %llu retries %llu)\n",
		written, dropped, retries);

	/* Stay until the module's exit stops us. */
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

static int __init stress_init(void)
{
	stress_chan = vesper_relay_open(THIS_MODULE, "stress", subbuf_size, n_subbufs,
					overwrite ? VESPER_RELAY_FLAG_OVERWRITE : 0);
	if (IS_ERR(stress_chan)) {
		pr_err("vesper_stress: cannot open relay channel \"stress\": %ld\n",
		       PTR_ERR(stress_chan));
		return PTR_ERR(stress_chan);
	}
	if (!run) {
		pr_info("vesper_stress: channel open, not writing (run=0)\n");
		return 0;
	}
	stress_thread = kthread_run(stress_fn, NULL, "vesper-stress");
	if (IS_ERR(stress_thread)) {
		int ret = PTR_ERR(stress_thread);

		stress_thread = NULL;
		vesper_relay_close(stress_chan);
		return ret;
	}
	pr_info("vesper_stress: writing %lu records (subbuf %u x %u%s)\n", n, subbuf_size,
		n_subbufs, overwrite ? ", overwrite" : "");
	return 0;
}

static void __exit stress_exit(void)
{
	if (stress_thread)
		kthread_stop(stress_thread);
	vesper_relay_close(stress_chan);
	pr_info("vesper_stress: removed\n");
}

module_init(stress_init);
module_exit(stress_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: write n records into relay channel \"stress\"");
