// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark fixture for tests/benches/probe_spec.rs (built by the bench, not the kit).
 * vesper_spec_cost_target: a noipa function taking a do_exit-like `long code`, for
 * exit probes retargeted onto it. vesper_spec_cost_run: from a kernel thread named
 * `comm`, calls it `n` times per run in interrupts-off stretches of `chunk`, timed with
 * ktime_get_ns(), `reps` runs with `pause_ms` between them (the host drains the relay
 * meanwhile), and logs the fastest:
 *   vesper_spec_cost: label=<l> ns_per_call=<ns>.<hundredths>
 *   vesper_spec_cost: label=<l> done
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/irqflags.h>
#include <linux/delay.h>
#include <linux/err.h>

#ifdef VESPER_SPEC_COST_TARGET
__attribute__((__noipa__)) long vesper_spec_cost_target(long code)
{
	asm volatile("" : "+r"(code));
	return code + 1;
}
EXPORT_SYMBOL_GPL(vesper_spec_cost_target);
MODULE_DESCRIPTION("Vesper benchmark fixture: a probed function");
#else
long vesper_spec_cost_target(long code);

static unsigned long n = 100000;
module_param(n, ulong, 0444);
static uint reps = 5;
module_param(reps, uint, 0444);
static uint chunk = 1000;
module_param(chunk, uint, 0444);
static uint pause_ms;
module_param(pause_ms, uint, 0444);
static char *comm = "vesper-cost";
module_param(comm, charp, 0444);
static char *label = "run";
module_param(label, charp, 0444);

static struct task_struct *runner;
static long sink;

static int run(void *data)
{
	u64 best = U64_MAX;
	uint r;

	for (r = 0; r < reps; r++) {
		unsigned long i = 0, flags;
		u64 t0 = ktime_get_ns(), dt;

		while (i < n) {
			unsigned long end = min(i + chunk, n);

			local_irq_save(flags);
			for (; i < end; i++)
				sink += vesper_spec_cost_target((long)(i & 0xff) << 8);
			local_irq_restore(flags);
		}
		dt = ktime_get_ns() - t0;
		if (dt < best)
			best = dt;
		if (pause_ms)
			msleep(pause_ms);
	}
	best = best * 100 / n;
	pr_info("vesper_spec_cost: label=%s ns_per_call=%llu.%02llu\n", label, best / 100, best % 100);
	pr_info("vesper_spec_cost: label=%s done\n", label);
	while (!kthread_should_stop())
		msleep(10);
	return 0;
}

static int __init cost_init(void)
{
	runner = kthread_run(run, NULL, "%s", comm);
	return PTR_ERR_OR_ZERO(runner);
}

static void __exit cost_exit(void)
{
	kthread_stop(runner);
}

module_init(cost_init);
module_exit(cost_exit);
MODULE_DESCRIPTION("Vesper benchmark fixture: calls the probed function");
#endif
MODULE_LICENSE("GPL");
