// SPDX-License-Identifier: GPL-2.0
/* Test fixture: a module whose init refuses to load (init_module → -ENODEV). */
#include <linux/module.h>
#include <linux/kernel.h>

static int __init vesper_fail_init_init(void)
{
	pr_err("vesper_fail_init: refusing to load (test fixture)\n");
	return -ENODEV;
}

static void __exit vesper_fail_init_exit(void)
{
}

module_init(vesper_fail_init_init);
module_exit(vesper_fail_init_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: init fails with -ENODEV");
