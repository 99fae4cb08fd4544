// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_panic_probe: on a kernel panic, send the panic message to the host through
 * relay channel "panic" (overwrite mode, 2 x 4 KiB per CPU) as one urgent
 * RECORD_PANIC. The relay writer takes no lock and rings the doorbell itself, so the
 * record and its notification leave before the guest stops.
 *
 * Two hooks, one record:
 *  - a kprobe on the entry of panic() writes the record before anything else of the
 *    panic path runs (before panic() prints, dumps the stack, tries __crash_kexec and
 *    runs the notifier chain, where pvpanic tells the host). The message is formatted
 *    here from panic()'s x86-64 argument registers (fmt in rdi, up to five integer
 *    class arguments in rsi, rdx, rcx, r8, r9); a format asking for more, or for a
 *    conversion the kernel's vsnprintf does not know (floating point, %n, ...), is
 *    sent raw, prefixed "(unformatted) ".
 *  - a panic notifier (priority INT_MAX) is the fallback: it writes the record only
 *    if the kprobe did not (kprobe not registered, or the hit was missed, e.g. a
 *    panic raised from inside another kprobe handler).
 * An atomic flag lets only the first hook of the first panicking CPU write.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/ctype.h>
#include <linux/kprobes.h>
#include <linux/panic_notifier.h>
#include <linux/notifier.h>
#include <linux/sched.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/atomic.h>
#include <linux/err.h>

#include "vesper_relay_api.h"

/* Integer-class variadic arguments of panic() still in registers at its entry. */
#define VESPER_PANIC_REG_ARGS 5

static struct vesper_relay *vesper_panic_chan;
static bool vesper_panic_kp_live;

/*
 * 0 until a hook takes the panic, then 1 for good: only its taker writes the record,
 * and only the taker touches vesper_panic_rec (no big record on the panic stack).
 */
static atomic_t vesper_panic_taken = ATOMIC_INIT(0);
static struct vesper_panic_record vesper_panic_rec;

/* Skips a width or precision: '*' takes an argument (counted in *n), digits do not. */
static const char *vesper_panic_fmt_count(const char *p, int *n)
{
	if (*p == '*') {
		(*n)++;
		return p + 1;
	}
	while (isdigit(*p))
		p++;
	return p;
}

/*
 * Arguments fmt consumes (each conversion, and each '*' width or precision), or -1 if
 * it has a conversion the kernel's vsnprintf does not handle (floating point, %n, an
 * unknown letter), which it would refuse with a WARN. Follows format_decode().
 */
static int vesper_panic_fmt_args(const char *fmt)
{
	const char *p = fmt;
	int n = 0;

	while ((p = strchr(p, '%')) != NULL) {
		p++;
		if (*p == '%') {
			p++;
			continue;
		}
		while (*p && strchr("-+ #0", *p))
			p++;
		p = vesper_panic_fmt_count(p, &n);
		if (*p == '.')
			p = vesper_panic_fmt_count(p + 1, &n);
		while (*p && strchr("hlLzZt", *p))
			p++;
		if (!*p)
			break;
		if (*p == '%') {
			p++;
			continue;
		}
		if (!strchr("cspdiouxX", *p))
			return -1;
		n++;
		p++;
	}
	return n;
}

/* Fill vesper_panic_rec and write it; the caller has taken the panic. */
static int vesper_panic_send(void)
{
	struct vesper_panic_record *rec = &vesper_panic_rec;

	rec->cpu = raw_smp_processor_id();
	rec->pid = task_pid_nr(current);
	if (!vesper_panic_chan)
		return -ENODEV;
	return vesper_relay_write(vesper_panic_chan, VESPER_RECORD_PANIC,
				  VESPER_RECORD_FLAG_URGENT, rec, sizeof(*rec));
}

/* Like panic(): a message ending in a newline loses it. */
static void vesper_panic_chomp(char *msg)
{
	size_t len = strlen(msg);

	if (len && msg[len - 1] == '\n')
		msg[len - 1] = '\0';
}

static int vesper_panic_kp_pre(struct kprobe *p, struct pt_regs *regs)
{
	const char *fmt = (const char *)regs->di;
	char *msg = (char *)vesper_panic_rec.message;
	size_t size = sizeof(vesper_panic_rec.message);
	int nargs, ret;

	/* A second panic (another CPU, or recursion) leaves the first one's record. */
	if (atomic_cmpxchg(&vesper_panic_taken, 0, 1) != 0)
		return 0;

	memset(&vesper_panic_rec, 0, sizeof(vesper_panic_rec));
	if (fmt) {
		nargs = vesper_panic_fmt_args(fmt);
		if (nargs >= 0 && nargs <= VESPER_PANIC_REG_ARGS)
			snprintf(msg, size, fmt, (unsigned long)regs->si,
				 (unsigned long)regs->dx, (unsigned long)regs->cx,
				 (unsigned long)regs->r8, (unsigned long)regs->r9);
		else
			snprintf(msg, size, "(unformatted) %s", fmt);
		vesper_panic_chomp(msg);
	}
	ret = vesper_panic_send();
	pr_emerg("vesper_panic_probe: panic on cpu %u pid %d: relay record %s (%d) from kprobe on panic()\n",
		 vesper_panic_rec.cpu, vesper_panic_rec.pid, ret ? "not sent" : "sent", ret);
	return 0;
}

static struct kprobe vesper_panic_kp = {
	.symbol_name = "panic",
	.pre_handler = vesper_panic_kp_pre,
};

static int vesper_panic_notify(struct notifier_block *nb, unsigned long event, void *data)
{
	int ret;

	if (atomic_cmpxchg(&vesper_panic_taken, 0, 1) != 0) {
		pr_emerg("vesper_panic_probe: panic on cpu %u pid %d: relay record already handled by kprobe on panic()\n",
			 raw_smp_processor_id(), task_pid_nr(current));
		return NOTIFY_DONE;
	}

	memset(&vesper_panic_rec, 0, sizeof(vesper_panic_rec));
	if (data)
		strscpy((char *)vesper_panic_rec.message, data,
			sizeof(vesper_panic_rec.message));
	ret = vesper_panic_send();
	pr_emerg("vesper_panic_probe: panic on cpu %u pid %d: relay record %s (%d)\n",
		 vesper_panic_rec.cpu, vesper_panic_rec.pid, ret ? "not sent" : "sent", ret);
	return NOTIFY_DONE;
}

static struct notifier_block vesper_panic_nb = {
	.notifier_call = vesper_panic_notify,
	.priority = INT_MAX,	/* before notifiers that may stop the machine */
};

static int __init vesper_panic_init(void)
{
	struct vesper_relay *chan;
	int ret;

	chan = vesper_relay_open(THIS_MODULE, "panic", 4096, 2, VESPER_RELAY_FLAG_OVERWRITE);
	if (IS_ERR(chan)) {
		pr_warn("vesper_panic_probe: relay channel \"panic\" unavailable (%ld); panics are only logged\n",
			PTR_ERR(chan));
		chan = NULL;
	}
	vesper_panic_chan = chan;

	ret = register_kprobe(&vesper_panic_kp);
	if (ret) {
		pr_warn("vesper_panic_probe: register_kprobe(panic) failed: %d; the panic notifier alone reports panics\n",
			ret);
	} else {
		vesper_panic_kp_live = true;
	}
	atomic_notifier_chain_register(&panic_notifier_list, &vesper_panic_nb);
	pr_info("vesper_panic_probe: panic notifier registered (relay %s)\n",
		chan ? "connected" : "absent");
	if (vesper_panic_kp_live)
		pr_info("vesper_panic_probe: panic hook: kprobe on panic() at %pS + notifier fallback\n",
			vesper_panic_kp.addr);
	else
		pr_info("vesper_panic_probe: panic hook: notifier only\n");
	return 0;
}

static void __exit vesper_panic_exit(void)
{
	if (vesper_panic_kp_live)
		unregister_kprobe(&vesper_panic_kp);
	atomic_notifier_chain_unregister(&panic_notifier_list, &vesper_panic_nb);
	vesper_relay_close(vesper_panic_chan);
	pr_info("vesper_panic_probe: removed\n");
}

module_init(vesper_panic_init);
module_exit(vesper_panic_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper probe: report kernel panics through relay channel \"panic\"");
