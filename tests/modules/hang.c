// SPDX-License-Identifier: GPL-2.0
/*
 * Test fixture: hangs a CPU the way a kernel bug does -- a kernel thread that spins
 * with interrupts off for hang_ms milliseconds (10 s by default), starting delay_ms
 * after load so that the load itself completes first. On a one-CPU guest nothing else
 * runs meanwhile: not the Vesper frontend, not the timer tick. Logs before it starts.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/delay.h>
#include <linux/irqflags.h>

static unsigned int hang_ms = 10000;
module_param(hang_ms, uint, 0444);
MODULE_PARM_DESC(hang_ms, "How long to spin with interrupts off, in milliseconds");

static unsigned int delay_ms = 1000;
module_param(delay_ms, uint, 0444);
MODULE_PARM_DESC(delay_ms, "Wait this long after load before hanging");

static struct task_struct *hanger;

static int vesper_hang_fn(void *unused)
{
	unsigned long flags;
	unsigned int i;

	msleep(delay_ms);
	pr_emerg("vesper_hang: spinning with interrupts off for %u ms on CPU %d\n", hang_ms,
		 raw_smp_processor_id());
	local_irq_save(flags);
	/* mdelay busy-waits on the TSC: no interrupt, no tick needed. */
	for (i = 0; i < hang_ms; i++)
		mdelay(1);
	local_irq_restore(flags);
	pr_info("vesper_hang: interrupts back on\n");
	while (!kthread_should_stop())
		msleep(100);
	return 0;
}

static int __init vesper_hang_init(void)
{
	hanger = kthread_run(vesper_hang_fn, NULL, "vesper_hang");
	return PTR_ERR_OR_ZERO(hanger);
}

static void __exit vesper_hang_exit(void)
{
	kthread_stop(hanger);
}

module_init(vesper_hang_init);
module_exit(vesper_hang_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: a CPU spinning with interrupts off");
