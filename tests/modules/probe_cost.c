// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_probe_cost: benchmark fixture. What does a kprobe hit that writes one relay
 * record cost, against the same kprobe writing nothing?
 *
 * From a kernel thread (insmod returns at once) it calls its own noinline function
 * vesper_probe_cost_target() n times per run, timed with ktime_get_ns(), for three
 * cases:
 *   none          no kprobe registered (the bare call: the baseline of the baseline)
 *   empty_kprobe  a kprobe on the function whose pre_handler returns 0 at once
 *   record_kprobe the same kprobe, its pre_handler writes one 64-byte record (24-byte
 *                 header + 40-byte vesper_stress_record, RECORD_STRESS) into relay
 *                 channel "cost", opened in overwrite mode (8 x 64 KiB sub-buffers per
 *                 CPU) so a full buffer never turns a write into a drop
 * Each case runs `reps` times; the fastest run is kept. Calls are made in chunks of
 * `chunk` with interrupts off (irqs_off=1, the default) so timer ticks and other
 * interrupts stay out of the figures; kprobes fire with interrupts off (the pre_handler
 * checks that it ran, and nmissed is checked after each case).
 *
 * Log lines:
 *   vesper_probe_cost: kprobe at <sym> mechanism=<ftrace|int3|optimized>
 *   vesper_probe_cost: case=<name> ns_per_call=<ns>.<hundredths> (one per case)
 *   vesper_probe_cost: records written=<w> dropped=<d> expected=<e>
 *   vesper_probe_cost: done
 * or `vesper_probe_cost: failed: ...` on an error.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/kprobes.h>
#include <linux/ktime.h>
#include <linux/irqflags.h>
#include <linux/sched.h>
#include <linux/err.h>
#include <linux/string.h>

#include "vesper_relay_api.h"

static unsigned long n = 200000;
module_param(n, ulong, 0444);
MODULE_PARM_DESC(n, "calls per run (default 200000)");

static uint reps = 5;
module_param(reps, uint, 0444);
MODULE_PARM_DESC(reps, "runs per case; the fastest is kept (default 5)");

static uint chunk = 1000;
module_param(chunk, uint, 0444);
MODULE_PARM_DESC(chunk, "calls per interrupts-off stretch (default 1000)");

static bool irqs_off = true;
module_param(irqs_off, bool, 0444);
MODULE_PARM_DESC(irqs_off, "time the calls with interrupts off (default 1)");

#define COST_SUBBUF_SIZE (64 * 1024)
#define COST_N_SUBBUFS 8

static struct vesper_relay *cost_chan;
static struct task_struct *cost_thread;
static struct vesper_stress_record cost_rec;
static u64 cost_sink;
/* Set by the checking pre_handler; read once the calls are done. */
static unsigned long cost_check_hits;
static bool cost_check_irqs_off;

/*
 * The probed function. noipa (noinline, no clones, no IPA): every call in the loop is
 * a real call to this very symbol, so the kprobe on it sees each one.
 */
static __attribute__((__noipa__)) int vesper_probe_cost_target(int x)
{
	asm volatile("" : "+r"(x));
	return x + 1;
}

static int cost_pre_empty(struct kprobe *p, struct pt_regs *regs)
{
	return 0;
}

static int cost_pre_record(struct kprobe *p, struct pt_regs *regs)
{
	cost_rec.index++;
	vesper_relay_write(cost_chan, VESPER_RECORD_STRESS, 0, &cost_rec, sizeof(cost_rec));
	return 0;
}

static int cost_pre_check(struct kprobe *p, struct pt_regs *regs)
{
	cost_check_hits++;
	if (irqs_disabled())
		cost_check_irqs_off = true;
	return 0;
}

static struct kprobe cost_kp;
static bool cost_kp_registered;

static int cost_register(kprobe_pre_handler_t pre)
{
	int ret;

	memset(&cost_kp, 0, sizeof(cost_kp));
	cost_kp.addr = (kprobe_opcode_t *)vesper_probe_cost_target;
	cost_kp.pre_handler = pre;
	ret = register_kprobe(&cost_kp);
	if (ret) {
		pr_err("vesper_probe_cost: failed: register_kprobe(%ps): %d\n",
		       vesper_probe_cost_target, ret);
		return ret;
	}
	cost_kp_registered = true;
	return 0;
}

static void cost_unregister(void)
{
	if (cost_kp_registered) {
		unregister_kprobe(&cost_kp);
		cost_kp_registered = false;
	}
}

static const char *cost_mechanism(const struct kprobe *kp)
{
	if (kp->flags & KPROBE_FLAG_FTRACE)
		return "ftrace";
	if (kp->flags & KPROBE_FLAG_OPTIMIZED)
		return "optimized";
	return "int3";
}

/* ns for n calls (interrupt-off stretches only), or 0 if stopped. */
static u64 cost_run(void)
{
	unsigned long done = 0, flags = 0;
	u64 total = 0, sink = 0, t0, t1;
	unsigned int i, k;

	while (done < n) {
		if (kthread_should_stop())
			return 0;
		k = min_t(unsigned long, chunk ? chunk : 1, n - done);
		if (irqs_off)
			local_irq_save(flags);
		else
			preempt_disable();
		t0 = ktime_get_ns();
		for (i = 0; i < k; i++)
			sink += vesper_probe_cost_target(i);
		t1 = ktime_get_ns();
		if (irqs_off)
			local_irq_restore(flags);
		else
			preempt_enable();
		total += t1 - t0;
		done += k;
		cond_resched();
	}
	WRITE_ONCE(cost_sink, cost_sink + sink);
	return total;
}

/* Best of reps runs, in hundredths of ns per call; 0 if stopped. */
static u64 cost_case(void)
{
	u64 best = U64_MAX, t;
	unsigned int r;

	for (r = 0; r < max(reps, 1U); r++) {
		t = cost_run();
		if (!t)
			return 0;
		best = min(best, t);
	}
	return div64_u64(best * 100, n);
}

static void cost_print(const char *name, u64 hundredths)
{
	pr_info("vesper_probe_cost: case=%s ns_per_call=%llu.%02llu\n", name,
		hundredths / 100, hundredths % 100);
}

/* One registration with a counting handler: the probe is hit, also with irqs off. */
static int cost_check(void)
{
	unsigned long flags;
	int ret, i;

	ret = cost_register(cost_pre_check);
	if (ret)
		return ret;
	pr_info("vesper_probe_cost: kprobe at %pS mechanism=%s\n", cost_kp.addr,
		cost_mechanism(&cost_kp));
	cost_check_hits = 0;
	cost_check_irqs_off = false;
	local_irq_save(flags);
	for (i = 0; i < 10; i++)
		cost_sink += vesper_probe_cost_target(i);
	local_irq_restore(flags);
	cost_unregister();
	if (cost_check_hits != 10 || !cost_check_irqs_off) {
		pr_err("vesper_probe_cost: failed: check saw %lu of 10 hits (irqs off: %d)\n",
		       cost_check_hits, cost_check_irqs_off);
		return -EIO;
	}
	return 0;
}

static int cost_kprobe_case(const char *name, kprobe_pre_handler_t pre, u64 *out)
{
	int ret;

	ret = cost_register(pre);
	if (ret)
		return ret;
	*out = cost_case();
	if (cost_kp.nmissed)
		pr_warn("vesper_probe_cost: case=%s missed %lu hits\n", name, cost_kp.nmissed);
	cost_unregister();
	return 0;
}

static int cost_fn(void *data)
{
	u64 none, empty = 0, record = 0, written0 = 0, written = 0, dropped = 0;
	int ret;

	ret = cost_check();
	if (ret)
		goto idle;

	none = cost_case();
	if (!none)
		goto idle;
	cost_print("none", none);

	ret = cost_kprobe_case("empty_kprobe", cost_pre_empty, &empty);
	if (ret || !empty)
		goto idle;
	cost_print("empty_kprobe", empty);

	vesper_relay_stats(cost_chan, &written0, NULL);
	ret = cost_kprobe_case("record_kprobe", cost_pre_record, &record);
	if (ret || !record)
		goto idle;
	cost_print("record_kprobe", record);
	vesper_relay_stats(cost_chan, &written, &dropped);
	pr_info("vesper_probe_cost: records written=%llu dropped=%llu expected=%llu\n",
		written - written0, dropped, (u64)n * max(reps, 1U));
	pr_info("vesper_probe_cost: done\n");

idle:
	cost_unregister();
	/* Stay until the module's exit stops us. */
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

static int __init cost_init(void)
{
	if (!n)
		return -EINVAL;
	cost_rec.total = n;
	cost_chan = vesper_relay_open(THIS_MODULE, "cost", COST_SUBBUF_SIZE, COST_N_SUBBUFS,
				      VESPER_RELAY_FLAG_OVERWRITE);
	if (IS_ERR(cost_chan)) {
		pr_err("vesper_probe_cost: cannot open relay channel \"cost\": %ld\n",
		       PTR_ERR(cost_chan));
		return PTR_ERR(cost_chan);
	}
	cost_thread = kthread_run(cost_fn, NULL, "vesper-pcost");
	if (IS_ERR(cost_thread)) {
		int ret = PTR_ERR(cost_thread);

		cost_thread = NULL;
		vesper_relay_close(cost_chan);
		return ret;
	}
	pr_info("vesper_probe_cost: measuring n=%lu calls x %u runs per case (chunk=%u irqs_off=%d)\n",
		n, max(reps, 1U), chunk, irqs_off);
	return 0;
}

static void __exit cost_exit(void)
{
	if (cost_thread)
		kthread_stop(cost_thread);
	cost_unregister();
	vesper_relay_close(cost_chan);
	pr_info("vesper_probe_cost: removed\n");
}

module_init(cost_init);
module_exit(cost_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper bench fixture: cost of a kprobe hit writing a relay record");
