// SPDX-License-Identifier: GPL-2.0
/*
 * Test fixture: a ~6 MiB module (6 MiB blob in .rodata), big enough to need several
 * staging chunks; used to test a host timeout in the middle of a transfer.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include "blob.h"

#define BLOB_PAGES 1536	/* 6 MiB */

VESPER_BLOB(vesper_big_blob, BLOB_PAGES);

static int __init vesper_big_init(void)
{
	const u8 *b = vesper_big_blob;

	pr_info("vesper_big: loaded (blob %zu bytes, first %#x last %#x)\n",
		sizeof(vesper_big_blob), b[8], b[sizeof(vesper_big_blob) - 1]);
	return 0;
}

static void __exit vesper_big_exit(void)
{
	pr_info("vesper_big: unloaded\n");
}

module_init(vesper_big_init);
module_exit(vesper_big_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: ~6 MiB module for transfer tests");
