// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_oom_probe: a kprobe on mark_oom_victim (first argument: the victim task)
 * reports every OOM-killer victim to the host through relay channel "oom" as an
 * urgent RECORD_OOM: pid, oom_score_adj, total VM and anonymous/file RSS in KiB, comm.
 * The OOM killer calls mark_oom_victim with the victim's task_lock held and its mm
 * checked non-NULL, so the mm is stable while the handler reads its counters.
 * Without a frontend (no relay channel) the probe still loads and only logs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/atomic.h>
#include <linux/string.h>
#include <linux/err.h>

#include "vesper_relay_api.h"

static struct vesper_relay *vesper_oom_chan;
static atomic_long_t vesper_oom_hits = ATOMIC_LONG_INIT(0);

#define VESPER_PAGES_TO_KB(x) ((u64)(x) << (PAGE_SHIFT - 10))

static int vesper_oom_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct task_struct *tsk = (struct task_struct *)regs->di;
	struct vesper_oom_record rec;
	struct mm_struct *mm;
	int ret = -ENODEV;

	if (!tsk)
		return 0;
	atomic_long_inc(&vesper_oom_hits);
	memset(&rec, 0, sizeof(rec));
	rec.pid = task_pid_nr(tsk);
	rec.oom_score_adj = tsk->signal ? tsk->signal->oom_score_adj : 0;
	mm = READ_ONCE(tsk->mm);
	if (mm) {
		rec.total_vm_kb = VESPER_PAGES_TO_KB(READ_ONCE(mm->total_vm));
		rec.anon_rss_kb = VESPER_PAGES_TO_KB(get_mm_counter(mm, MM_ANONPAGES));
		rec.file_rss_kb = VESPER_PAGES_TO_KB(get_mm_counter(mm, MM_FILEPAGES));
	}
	memcpy(rec.comm, tsk->comm, sizeof(rec.comm));
	rec.comm[sizeof(rec.comm) - 1] = '\0';
	if (vesper_oom_chan)
		ret = vesper_relay_write(vesper_oom_chan, VESPER_RECORD_OOM,
					 VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	pr_warn("vesper_oom_probe: OOM victim pid=%d comm=%s oom_score_adj=%d total_vm=%llukB anon_rss=%llukB file_rss=%llukB relay=%d\n",
		rec.pid, rec.comm, rec.oom_score_adj, rec.total_vm_kb, rec.anon_rss_kb,
		rec.file_rss_kb, ret);
	return 0;
}

static struct kprobe vesper_oom_kp = {
	.symbol_name = "mark_oom_victim",
	.pre_handler = vesper_oom_pre,
};

static int __init vesper_oom_init(void)
{
	struct vesper_relay *chan;
	int ret;

	chan = vesper_relay_open(THIS_MODULE, "oom", 4096, 4, 0);
	if (IS_ERR(chan)) {
		pr_warn("vesper_oom_probe: relay channel \"oom\" unavailable (%ld); OOM victims are only logged\n",
			PTR_ERR(chan));
		chan = NULL;
	}
	vesper_oom_chan = chan;

	ret = register_kprobe(&vesper_oom_kp);
	if (ret) {
		pr_err("vesper_oom_probe: register_kprobe(mark_oom_victim) failed: %d\n", ret);
		vesper_relay_close(vesper_oom_chan);
		return ret;
	}
	pr_info("vesper_oom_probe: kprobe on mark_oom_victim live at %pS (relay %s)\n",
		vesper_oom_kp.addr, chan ? "connected" : "absent");
	return 0;
}

static void __exit vesper_oom_exit(void)
{
	unregister_kprobe(&vesper_oom_kp);
	vesper_relay_close(vesper_oom_chan);
	pr_info("vesper_oom_probe: removed after %lu OOM victims\n",
		(unsigned long)atomic_long_read(&vesper_oom_hits));
}

module_init(vesper_oom_init);
module_exit(vesper_oom_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe: report OOM-killer victims through relay channel \"oom\"");
