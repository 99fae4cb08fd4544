// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_relay_compat: export a kernel relay (relayfs) channel to the host.
 *
 * Under ivshmem the host cannot see the kernel's own relay pages, so each finished
 * relay sub-buffer is copied into a Vesper relay channel as one RECORD_RAW record
 * (shared-abi/PROTOCOL.md, "Relayfs compatibility"). The probe keeps using relay_open()
 * / relay_write() / relay_flush() as before and adds three things: it passes
 * virtrelay_subbuf_start_callback as subbuf_start, and calls relay_export_start() /
 * relay_export_stop().
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/relay.h>
#include <linux/rculist.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/percpu.h>
#include <linux/string.h>
#include <linux/err.h>

#include "vesper_abi.h"
#include "vesper_relay_api.h"
#include "vesper_relay.h"

struct vr_export {
	struct list_head node;		/* vre_list, RCU */
	struct rchan *chan;
	struct vesper_relay *vr;
	char modname[VESPER_RELAY_NAME_LEN];
	/* Per relay buffer (buf->cpu): subbufs_produced when last exported. */
	size_t *last_produced;
};

static DEFINE_MUTEX(vre_lock);		/* writers of vre_list */
static LIST_HEAD(vre_list);

static struct vr_export *vre_find_name(const char *modname)
{
	struct vr_export *e;

	list_for_each_entry(e, &vre_list, node)
		if (!strcmp(e->modname, modname))
			return e;
	return NULL;
}

int relay_export_start(struct rchan *chan, const char *modname)
{
	struct vr_export *e, *o;
	const char *name;
	size_t subbuf, n;
	unsigned int cpu;
	int ret;

	if (!chan || !modname || !modname[0])
		return -EINVAL;
	subbuf = round_up(chan->subbuf_size + sizeof(struct vesper_record_header), PAGE_SIZE);
	if (subbuf > VESPER_RELAY_MAX_SUBBUF_SIZE)
		return -E2BIG;
	subbuf = max_t(size_t, subbuf, VESPER_RELAY_MIN_SUBBUF_SIZE);
	n = clamp_t(size_t, chan->n_subbufs, 2, VESPER_RELAY_MAX_SUBBUFS);
	name = chan->has_base_filename && chan->base_filename[0] ? chan->base_filename
								 : modname;

	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	e->last_produced = kcalloc(nr_cpu_ids, sizeof(*e->last_produced), GFP_KERNEL);
	if (!e->last_produced) {
		kfree(e);
		return -ENOMEM;
	}
	e->chan = chan;
	strscpy(e->modname, modname, sizeof(e->modname));

	mutex_lock(&vre_lock);
	list_for_each_entry(o, &vre_list, node) {
		if (o->chan == chan || !strcmp(o->modname, e->modname)) {
			ret = -EBUSY;
			goto err;
		}
	}
	/* Channel names are at most 63 characters; a longer base filename is cut. */
	{
		char cname[VESPER_RELAY_NAME_LEN];

		strscpy(cname, name, sizeof(cname));
		e->vr = vr_open_named(modname, cname, subbuf, n, 0);
	}
	if (IS_ERR(e->vr)) {
		ret = PTR_ERR(e->vr);
		goto err;
	}
	/* Only sub-buffers finished from now on are exported. */
	for_each_possible_cpu(cpu) {
		struct rchan_buf *b = *per_cpu_ptr(chan->buf, cpu);

		if (b && b->cpu < nr_cpu_ids)
			e->last_produced[b->cpu] = b->subbufs_produced;
	}
	list_add_tail_rcu(&e->node, &vre_list);
	mutex_unlock(&vre_lock);
	return 0;

err:
	mutex_unlock(&vre_lock);
	kfree(e->last_produced);
	kfree(e);
	return ret;
}
EXPORT_SYMBOL_GPL(relay_export_start);

void relay_export_stop(const char *modname)
{
	struct vr_export *e;

	if (!modname)
		return;
	mutex_lock(&vre_lock);
	e = vre_find_name(modname);
	if (e)
		list_del_rcu(&e->node);
	mutex_unlock(&vre_lock);
	if (!e)
		return;
	/* No callback still looks at e (callbacks run in RCU read sections). */
	synchronize_rcu();
	vesper_relay_close(e->vr);
	kfree(e->last_produced);
	kfree(e);
}
EXPORT_SYMBOL_GPL(relay_export_stop);

/*
 * subbuf_start callback. relay calls it with prev_subbuf = the sub-buffer it just
 * finished (prev_padding unused bytes at its end), or again with the same one after a
 * "buffer full" answer; subbufs_produced tells the two apart. The return value is the
 * kernel's default callback's: 0 (do not switch) when the buffer is full, else 1.
 */
int virtrelay_subbuf_start_callback(struct rchan_buf *buf, void *subbuf,
				    void *prev_subbuf, size_t prev_padding)
{
	struct rchan *chan = buf->chan;
	struct vr_export *e;

	if (prev_subbuf && prev_padding <= chan->subbuf_size) {
		size_t len = chan->subbuf_size - prev_padding;

		rcu_read_lock();
		list_for_each_entry_rcu(e, &vre_list, node) {
			if (e->chan != chan)
				continue;
			if (buf->cpu < nr_cpu_ids &&
			    READ_ONCE(e->last_produced[buf->cpu]) != buf->subbufs_produced) {
				WRITE_ONCE(e->last_produced[buf->cpu], buf->subbufs_produced);
				if (len)
					vesper_relay_write(e->vr, VESPER_RECORD_RAW, 0,
							   prev_subbuf, len);
			}
			break;
		}
		rcu_read_unlock();
	}
	return relay_buf_full(buf) ? 0 : 1;
}
EXPORT_SYMBOL_GPL(virtrelay_subbuf_start_callback);
