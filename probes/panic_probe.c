// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_panic_probe: on a kernel panic, send the panic message to the host through
 * relay channel "panic" (overwrite mode, 2 x 4 KiB per CPU) as one urgent
 * RECORD_PANIC. The relay writer takes no lock and rings the doorbell itself, so the
 * record and its notification leave before the guest stops.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/panic_notifier.h>
#include <linux/notifier.h>
#include <linux/sched.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/err.h>

#include "vesper_relay_api.h"

static struct vesper_relay *vesper_panic_chan;

static int vesper_panic_notify(struct notifier_block *nb, unsigned long event, void *data)
{
	struct vesper_panic_record rec;
	int ret = -ENODEV;

	memset(&rec, 0, sizeof(rec));
	rec.cpu = raw_smp_processor_id();
	rec.pid = task_pid_nr(current);
	if (data)
		strscpy((char *)rec.message, data, sizeof(rec.message));
	if (vesper_panic_chan)
		ret = vesper_relay_write(vesper_panic_chan, VESPER_RECORD_PANIC,
					 VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	pr_emerg("vesper_panic_probe: panic on cpu %u pid %d: relay record %s (%d)\n",
		 rec.cpu, rec.pid, ret ? "not sent" : "sent", ret);
	return NOTIFY_DONE;
}

static struct notifier_block vesper_panic_nb = {
	.notifier_call = vesper_panic_notify,
	.priority = INT_MAX,	/* before notifiers that may stop the machine */
};

static int __init vesper_panic_init(void)
{
	struct vesper_relay *chan;

	chan = vesper_relay_open(THIS_MODULE, "panic", 4096, 2, VESPER_RELAY_FLAG_OVERWRITE);
	if (IS_ERR(chan)) {
		pr_warn("vesper_panic_probe: relay channel \"panic\" unavailable (%ld); panics are only logged\n",
			PTR_ERR(chan));
		chan = NULL;
	}
	vesper_panic_chan = chan;
	atomic_notifier_chain_register(&panic_notifier_list, &vesper_panic_nb);
	pr_info("vesper_panic_probe: panic notifier registered (relay %s)\n",
		chan ? "connected" : "absent");
	return 0;
}

static void __exit vesper_panic_exit(void)
{
	atomic_notifier_chain_unregister(&panic_notifier_list, &vesper_panic_nb);
	vesper_relay_close(vesper_panic_chan);
	pr_info("vesper_panic_probe: removed\n");
}

module_init(vesper_panic_init);
module_exit(vesper_panic_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe: report kernel panics through relay channel \"panic\"");
