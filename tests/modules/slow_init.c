// SPDX-License-Identifier: GPL-2.0
/*
 * Test fixture: a module whose init takes init_ms milliseconds (30 s by default), as a
 * real driver's does while it waits for its hardware, then returns 0 -- or -fail when
 * fail is set (e.g. fail=110 for ETIMEDOUT).
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/delay.h>

static unsigned int init_ms = 30000;
module_param(init_ms, uint, 0444);
MODULE_PARM_DESC(init_ms, "How long init takes, in milliseconds (default 30000)");

static unsigned int fail;
module_param(fail, uint, 0444);
MODULE_PARM_DESC(fail, "Errno init returns (negated) after waiting; 0 loads");

static int __init vesper_slow_init_init(void)
{
	pr_info("vesper_slow_init: init waiting %u ms\n", init_ms);
	msleep(init_ms);
	if (fail) {
		pr_err("vesper_slow_init: init failing with -%u after %u ms\n", fail, init_ms);
		return -(int)min_t(unsigned int, fail, MAX_ERRNO);
	}
	pr_info("vesper_slow_init: init done after %u ms\n", init_ms);
	return 0;
}

static void __exit vesper_slow_init_exit(void)
{
}

module_init(vesper_slow_init_init);
module_exit(vesper_slow_init_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: an init that takes init_ms milliseconds");
