// SPDX-License-Identifier: GPL-2.0
/* Test fixture: a trivial module whose .ko is ~100 KiB (92 KiB blob in .rodata). */
#include <linux/module.h>
#include <linux/kernel.h>
#include "blob.h"

#define BLOB_PAGES 23	/* 92 KiB: the .ko comes to ~100 KiB */

VESPER_BLOB(vesper_bench_100k_blob, BLOB_PAGES);

static int __init vesper_bench_100k_init(void)
{
	const u8 *b = vesper_bench_100k_blob;

	pr_info("vesper_bench_100k: loaded (blob %zu bytes, first %#x last %#x)\n",
		sizeof(vesper_bench_100k_blob), b[8], b[sizeof(vesper_bench_100k_blob) - 1]);
	return 0;
}

static void __exit vesper_bench_100k_exit(void)
{
	pr_info("vesper_bench_100k: unloaded\n");
}

module_init(vesper_bench_100k_init);
module_exit(vesper_bench_100k_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper test fixture: ~100 KiB module for push benchmarks");
