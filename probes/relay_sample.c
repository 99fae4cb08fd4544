// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_relay_sample: an ordinary relayfs client (relay_open / relay_write /
 * relay_flush) whose channel is exported to the Vesper host. Compared with a plain
 * relay client it adds only: virtrelay_subbuf_start_callback as subbuf_start,
 * relay_export_start() after relay_open() and relay_export_stop() before
 * relay_close(). On load it writes three lines and flushes, so the host receives one
 * RECORD_RAW record holding them.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/relay.h>
#include <linux/debugfs.h>
#include <linux/err.h>

#include "vesper_relay_api.h"

static struct rchan *sample_chan;

static struct dentry *sample_create_buf_file(const char *filename, struct dentry *parent,
					     umode_t mode, struct rchan_buf *buf,
					     int *is_global)
{
	return debugfs_create_file(filename, mode, parent, buf, &relay_file_operations);
}

static int sample_remove_buf_file(struct dentry *dentry)
{
	debugfs_remove(dentry);
	return 0;
}

static const struct rchan_callbacks sample_callbacks = {
	.subbuf_start = virtrelay_subbuf_start_callback,	/* Vesper */
	.create_buf_file = sample_create_buf_file,
	.remove_buf_file = sample_remove_buf_file,
};

static int __init sample_init(void)
{
	char line[64];
	int i, len, exported;

	sample_chan = relay_open("vesper_relay_sample", NULL, 4096, 4, &sample_callbacks, NULL);
	if (!sample_chan) {
		pr_err("vesper_relay_sample: relay_open failed\n");
		return -ENOMEM;
	}
	exported = relay_export_start(sample_chan, KBUILD_MODNAME);	/* Vesper */
	if (exported)
		pr_warn("vesper_relay_sample: relay_export_start failed (%d); relayfs only\n",
			exported);

	for (i = 1; i <= 3; i++) {
		len = scnprintf(line, sizeof(line), "vesper relay sample line %d\n", i);
		relay_write(sample_chan, line, len);
	}
	relay_flush(sample_chan);
	pr_info("vesper_relay_sample: wrote 3 lines (exported: %s)\n", exported ? "no" : "yes");
	return 0;
}

static void __exit sample_exit(void)
{
	relay_export_stop(KBUILD_MODNAME);	/* Vesper */
	relay_close(sample_chan);
	pr_info("vesper_relay_sample: removed\n");
}

module_init(sample_init);
module_exit(sample_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper sample: a relayfs channel exported to the host");
