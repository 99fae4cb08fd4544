// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_commands: the host commands the frontend's worker executes (load, unload,
 * list modules, kernel log, clock) and posts the completion of. A module's init runs in
 * a load-job kthread of its own, so the worker keeps serving commands while it runs, and
 * posts its completion when it returns. Module images are fetched chunk by chunk through
 * granted staging pages and checked (CRC32) before the loader sees them; loading and
 * unloading themselves are vesper_loader.c's.
 */
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/crc32.h>
#include <linux/kmsg_dump.h>
#include <linux/string.h>
#include <linux/list.h>
#include <linux/err.h>
#include <linux/timekeeping.h>
#include <linux/atomic.h>

#include "vesper_front.h"
#include "vesper_commands.h"
#include "vesper_loader.h"

/* ---- kernel log ---------------------------------------------------------------- */

/* Newest kernel log lines that fit into the completion's log. */
static void vf_fill_log(struct vesper_completion_request *c)
{
	struct kmsg_dump_iter iter;
	size_t len = 0;

	kmsg_dump_rewind(&iter);
	if (!kmsg_dump_get_buffer(&iter, false, (char *)c->log, sizeof(c->log), &len))
		len = 0;
	c->log_len = min_t(size_t, len, sizeof(c->log));
}

/* ---- pushed-module bookkeeping ---------------------------------------------- */

/* Module names as the kernel spells them ('-' becomes '_'). */
static void vf_normalize_name(char *dst, const char *src, size_t size)
{
	size_t i;

	strscpy(dst, src, size);
	for (i = 0; dst[i]; i++)
		if (dst[i] == '-')
			dst[i] = '_';
}

static struct vesper_pushed *vf_find_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p;

	list_for_each_entry(p, &fe->pushed, node)
		if (!strcmp(p->name, name))
			return p;
	return NULL;
}

static void vf_add_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p;

	if (!name[0] || vf_find_pushed(fe, name))
		return;
	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return;
	strscpy(p->name, name, sizeof(p->name));
	list_add_tail(&p->node, &fe->pushed);
}

static void vf_del_pushed(struct vesper_front *fe, const char *name)
{
	struct vesper_pushed *p = vf_find_pushed(fe, name);

	if (p) {
		list_del(&p->node);
		kfree(p);
	}
}

/* ---- commands ------------------------------------------------------------------ */

/* Outcome of a command; stage is STAGE_*. deferred: a load job posts the completion. */
struct vf_result {
	int error;
	u32 stage;
	bool deferred;
};

static void vf_fail(struct vf_result *r, int error, u32 stage)
{
	r->error = error;
	r->stage = stage;
}

/* Revokes the live OP_LIST grant, if any, and frees its data-area pages. */
void vf_revoke_list_grant(struct vesper_front *fe)
{
	if (fe->list_grant != VESPER_GRANT_REF_NONE) {
		vf_revoke(fe, fe->list_grant);
		fe->list_grant = VESPER_GRANT_REF_NONE;
	}
	if (fe->list_pages) {
		vf_pages_free(fe, fe->list_off, fe->list_pages);
		fe->list_pages = 0;
	}
}


/* ---- load jobs ------------------------------------------------------------------ */

static int vf_load_job_thread(void *data)
{
	struct vesper_load_job *job = data;
	struct vesper_completion_request *c = job->cmpl;
	unsigned int stage;
	int ret;

	ret = vesper_loader_load(job->image, job->size, job->params, &stage);
	c->error = ret;
	c->stage = ret ? stage : VESPER_STAGE_DONE;
	if (ret)
		vf_fill_log(c);
	smp_store_release(&job->done, 1);
	atomic_set(&job->fe->load_work, 1);
	wake_up(&job->fe->wq);

	/* Kept until the worker has posted the completion and reaps us. */
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

static void vf_free_load_job(struct vesper_load_job *job)
{
	vfree(job->image);
	kfree(job->cmpl);
	kfree(job);
}

/* Stops (after init returned) and frees a job. Worker, or remove after the worker. */
void vf_reap_load_job(struct vesper_front *fe, struct vesper_load_job *job)
{
	list_del(&job->node);
	fe->n_load_jobs--;
	kthread_stop(job->task);
	vf_free_load_job(job);
}

/*
 * Runs init_module for image in a job thread; on success the job owns *image (set to
 * NULL) and the completion is posted when init returns. Worker only.
 */
static int vf_start_load_job(struct vesper_front *fe, u64 command_id, const char *name,
			     u8 **image, u64 size, const char *params)
{
	struct vesper_load_job *job;

	job = kzalloc(sizeof(*job), GFP_KERNEL);
	if (!job)
		return -ENOMEM;
	job->cmpl = kzalloc(sizeof(*job->cmpl), GFP_KERNEL);
	if (!job->cmpl) {
		kfree(job);
		return -ENOMEM;
	}
	job->fe = fe;
	strscpy(job->name, name, sizeof(job->name));
	strscpy(job->params, params, sizeof(job->params));
	job->size = size;
	job->cmpl->command_id = command_id;
	job->cmpl->op = VESPER_OP_LOAD;
	job->cmpl->data_grant = VESPER_GRANT_REF_NONE;
	/* `vesper lsmod` shows it pushed while it is still coming. */
	job->added_pushed = !vf_find_pushed(fe, name);
	if (job->added_pushed)
		vf_add_pushed(fe, name);

	job->image = *image;
	job->task = kthread_run(vf_load_job_thread, job, "vesper-load");
	if (IS_ERR(job->task)) {
		int ret = PTR_ERR(job->task);

		job->image = NULL;	/* still the caller's */
		if (job->added_pushed)
			vf_del_pushed(fe, name);
		vf_free_load_job(job);
		return ret;
	}
	*image = NULL;
	list_add_tail(&job->node, &fe->load_jobs);
	fe->n_load_jobs++;
	return 0;
}

/* Posts the completion of every load whose init returned, and reaps its job. */
void vf_pump_loads(struct vesper_front *fe)
{
	struct vesper_load_job *job, *tmp;
	u64 id;

	list_for_each_entry_safe(job, tmp, &fe->load_jobs, node) {
		struct vesper_completion_request *c = job->cmpl;

		if (!smp_load_acquire(&job->done))
			continue;
		if (c->error) {
			pr_info(VESPER_DRV_NAME ": load %s failed: %d\n", job->name, c->error);
			if (job->added_pushed)
				vf_del_pushed(fe, job->name);
		} else {
			pr_info(VESPER_DRV_NAME ": loaded %s (%llu bytes)\n", job->name, job->size);
		}
		c->guest_time_ns = ktime_get_ns();
		if (vf_post(fe, VESPER_REQ_COMPLETION, c, sizeof(*c), &id) == -ESHUTDOWN) {
			atomic_set(&fe->load_work, 1);	/* still due; remove reaps it */
			return;
		}
		vf_reap_load_job(fe, job);
	}
}

/*
 * REQ_PROGRESS: the command enters stage. Returns 0 when the host says go on, its
 * error (-ECANCELED: it gave up on the command) or a wait failure.
 */
static int vf_progress(struct vesper_front *fe, u64 command_id, u32 stage)
{
	struct vesper_progress_request req;
	s32 status;
	u64 id;
	int ret;

	memset(&req, 0, sizeof(req));
	req.command_id = command_id;
	req.stage = stage;
	ret = vf_post(fe, VESPER_REQ_PROGRESS, &req, sizeof(req), &id);
	if (!ret)
		ret = vf_wait(fe, id, VESPER_REQ_PROGRESS, VESPER_CMD_TIMEOUT, 0);
	if (ret)
		return ret;
	status = vf_rsp_hdr(fe)->status;
	return status ? vf_host_error(status) : 0;
}

static void vf_do_load(struct vesper_front *fe, const char *name, struct vf_result *r)
{
	const struct vesper_command_response *cmd = &fe->cmd;
	struct vesper_fetch_chunk_request req;
	struct vesper_chunk_response rsp;
	char params[VESPER_PARAMS_LEN];
	u64 size = cmd->image_size;
	u64 off = 0;
	unsigned int stage;
	u32 chunk = fe->chunk_size;
	unsigned int stage_pages = 0;
	u64 stage_off = 0;
	u8 *image;
	int ret;

	if (cmd->params_len >= VESPER_PARAMS_LEN)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	memcpy(params, cmd->params, cmd->params_len);
	params[cmd->params_len] = '\0';

	if (!size)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	if (size > VESPER_MAX_IMAGE_SIZE)
		return vf_fail(r, -EFBIG, VESPER_STAGE_PREPARE);
	if (!vesper_loader_can_load())
		return vf_fail(r, -ENOSYS, VESPER_STAGE_PREPARE);
	if (!fe->chunk_size)
		return vf_fail(r, -EPROTO, VESPER_STAGE_PREPARE);
	if (fe->n_load_jobs >= VESPER_MAX_LOAD_JOBS) {
		pr_info(VESPER_DRV_NAME ": load %s: %u module inits still running\n", name,
			fe->n_load_jobs);
		return vf_fail(r, -EBUSY, VESPER_STAGE_PREPARE);
	}

	/* Staging pages: a full chunk if the data area has room, else smaller chunks. */
	for (;;) {
		stage_pages = DIV_ROUND_UP(chunk, VESPER_PAGE_SIZE);
		if (!vf_pages_alloc(fe, stage_pages, &stage_off))
			break;
		if (chunk <= VESPER_PAGE_SIZE) {
			pr_warn(VESPER_DRV_NAME ": load %s: no free data-area page to stage into\n",
				name);
			return vf_fail(r, -ENOSPC, VESPER_STAGE_PREPARE);
		}
		chunk = max_t(u32, rounddown(chunk / 2, VESPER_PAGE_SIZE), VESPER_PAGE_SIZE);
	}

	image = vmalloc(size);
	if (!image) {
		vf_pages_free(fe, stage_off, stage_pages);
		return vf_fail(r, -ENOMEM, VESPER_STAGE_PREPARE);
	}

	while (off < size) {
		u32 want = (u32)min_t(u64, chunk, size - off);
		struct vesper_msg_header *h = vf_rsp_hdr(fe);
		u64 id;
		int ref;

		ref = vf_grant(fe, stage_off, want, VESPER_GRANT_WRITE,
			       VESPER_GRANT_OWNER_STAGING);
		if (ref < 0) {
			vf_fail(r, ref, VESPER_STAGE_TRANSFER);
			goto out;
		}

		memset(&req, 0, sizeof(req));
		req.command_id = cmd->command_id;
		req.offset = off;
		req.grant_ref = ref;
		ret = vf_post(fe, VESPER_REQ_FETCH_CHUNK, &req, sizeof(req), &id);
		if (!ret)
			ret = vf_wait(fe, id, VESPER_REQ_FETCH_CHUNK, VESPER_CMD_TIMEOUT,
				      sizeof(rsp));
		vf_revoke(fe, ref);
		if (ret) {
			if (ret == -ETIMEDOUT)
				pr_warn(VESPER_DRV_NAME
					": load %s: no chunk answer for offset %llu within 30 s\n",
					name, off);
			vf_fail(r, ret, VESPER_STAGE_TRANSFER);
			goto out;
		}
		if (h->status) {
			pr_info(VESPER_DRV_NAME ": load %s: host refused chunk at %llu: %d\n",
				name, off, h->status);
			vf_fail(r, vf_host_error(h->status), VESPER_STAGE_TRANSFER);
			goto out;
		}
		memcpy(&rsp, vf_rsp_payload(fe), sizeof(rsp));
		if (rsp.command_id != cmd->command_id || rsp.offset != off ||
		    rsp.len == 0 || rsp.len > want) {
			pr_warn(VESPER_DRV_NAME
				": load %s: bad chunk answer (command %llu offset %llu len %u, wanted %llu/%llu/<=%u)\n",
				name, rsp.command_id, rsp.offset, rsp.len,
				cmd->command_id, off, want);
			vf_fail(r, -EPROTO, VESPER_STAGE_TRANSFER);
			goto out;
		}
		/* Copy once out of shared memory, then check only the private copy. */
		memcpy(image + off, fe->shm + stage_off, rsp.len);
		if ((crc32_le(~0U, image + off, rsp.len) ^ ~0U) != rsp.crc32) {
			pr_warn(VESPER_DRV_NAME ": load %s: chunk at %llu fails its CRC\n",
				name, off);
			vf_fail(r, -EBADMSG, VESPER_STAGE_TRANSFER);
			goto out;
		}
		off += rsp.len;
	}

	/* The image is complete: the staging pages are free again (relay may use them). */
	vf_pages_free(fe, stage_off, stage_pages);
	stage_pages = 0;

	if ((crc32_le(~0U, image, size) ^ ~0U) != cmd->image_crc32) {
		pr_warn(VESPER_DRV_NAME ": load %s: image fails its CRC\n", name);
		vf_fail(r, -EBADMSG, VESPER_STAGE_TRANSFER);
		goto out;
	}

	/*
	 * Init may run long. The host says go on (and waits by its init limit from now),
	 * or that it gave up meanwhile: then nothing is loaded.
	 */
	ret = vf_progress(fe, cmd->command_id, VESPER_STAGE_INIT_MODULE);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": load %s: host did not confirm init: %d\n", name, ret);
		vf_fail(r, ret, VESPER_STAGE_TRANSFER);
		goto out;
	}
	ret = vf_start_load_job(fe, cmd->command_id, name, &image, size, params);
	if (!ret) {
		r->deferred = true;
		goto out;
	}
	pr_warn(VESPER_DRV_NAME ": load %s: no load thread (%d); init runs in the worker\n",
		name, ret);
	ret = vesper_loader_load(image, size, params, &stage);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": load %s failed: %d\n", name, ret);
		vf_fail(r, ret, stage);
		goto out;
	}
	pr_info(VESPER_DRV_NAME ": loaded %s (%llu bytes)\n", name, size);
	vf_add_pushed(fe, name);
out:
	if (stage_pages)
		vf_pages_free(fe, stage_off, stage_pages);
	vfree(image);
}

static void vf_do_unload(struct vesper_front *fe, const char *name, struct vf_result *r)
{
	unsigned int stage;
	int ret;

	if (!name[0] || fe->cmd.flags & ~VESPER_UNLOAD_FLAG_FORCE)
		return vf_fail(r, -EINVAL, VESPER_STAGE_COMMAND);
	if (!strcmp(name, THIS_MODULE->name)) {
		/* Our own exit would wait for this very thread. */
		pr_info(VESPER_DRV_NAME ": refusing to unload the frontend itself\n");
		return vf_fail(r, -EBUSY, VESPER_STAGE_DELETE_MODULE);
	}
	ret = vesper_loader_unload(name, fe->cmd.flags, &stage);
	if (ret) {
		pr_info(VESPER_DRV_NAME ": unload %s failed: %d\n", name, ret);
		return vf_fail(r, ret, stage);
	}
	pr_info(VESPER_DRV_NAME ": unloaded %s\n", name);
	vf_del_pushed(fe, name);
}

static void vf_do_list(struct vesper_front *fe, struct vf_result *r)
{
	struct vesper_completion_request *c = fe->cmpl;
	struct vesper_module_entry *e;
	unsigned int max, total, i, pages;
	size_t bytes;
	int n, ref, ret;
	u64 off;

	max = (unsigned int)min_t(u64, vf_data_space(fe) / sizeof(*e),
				  VESPER_MAX_LIST_ENTRIES);
	e = kvcalloc(max, sizeof(*e), GFP_KERNEL);
	if (!e)
		return vf_fail(r, -ENOMEM, VESPER_STAGE_LIST);

	n = vesper_loader_list(e, max, &total);
	if (n < 0) {
		vf_fail(r, n, VESPER_STAGE_LIST);
		goto out;
	}
	if (total > (unsigned int)n)
		pr_warn(VESPER_DRV_NAME ": module list truncated to %d of %u\n", n, total);
	for (i = 0; i < (unsigned int)n; i++) {
		e[i].name[sizeof(e[i].name) - 1] = '\0';
		if (vf_find_pushed(fe, (const char *)e[i].name))
			e[i].flags |= VESPER_MODULE_FLAG_PUSHED;
		if (!strcmp((const char *)e[i].name, THIS_MODULE->name))
			e[i].flags |= VESPER_MODULE_FLAG_FRONTEND;
	}

	bytes = (size_t)n * sizeof(*e);
	pages = max_t(unsigned int, DIV_ROUND_UP(bytes, VESPER_PAGE_SIZE), 1);
	ret = vf_pages_alloc(fe, pages, &off);
	if (ret) {
		vf_fail(r, ret, VESPER_STAGE_LIST);
		goto out;
	}
	memcpy(fe->shm + off, e, bytes);
	ref = vf_grant(fe, off, (u32)bytes, VESPER_GRANT_READ, VESPER_GRANT_OWNER_MODLIST);
	if (ref < 0) {
		vf_pages_free(fe, off, pages);
		vf_fail(r, ref, VESPER_STAGE_LIST);
		goto out;
	}
	fe->list_off = off;
	fe->list_pages = pages;
	fe->list_grant = ref;
	c->data_grant = ref;
	c->data_len = (u32)bytes;
out:
	kvfree(e);
}

/*
 * Execute fe->cmd and post its completion. Returns -ESHUTDOWN if the frontend is
 * stopping (no completion posted), else 0.
 */
int vf_run_command(struct vesper_front *fe)
{
	struct vesper_completion_request *c = fe->cmpl;
	struct vf_result r = { 0, VESPER_STAGE_DONE };
	char name[VESPER_MODULE_NAME_LEN];
	u64 id;
	int ret;

	/* A list grant whose completion the host never answered: the range is ours again. */
	vf_revoke_list_grant(fe);

	memset(c, 0, sizeof(*c));
	c->command_id = fe->cmd.command_id;
	c->op = fe->cmd.op;
	c->data_grant = VESPER_GRANT_REF_NONE;

	fe->cmd.name[sizeof(fe->cmd.name) - 1] = '\0';
	vf_normalize_name(name, (const char *)fe->cmd.name, sizeof(name));

	switch (fe->cmd.op) {
	case VESPER_OP_LOAD:
		vf_do_load(fe, name, &r);
		break;
	case VESPER_OP_UNLOAD:
		vf_do_unload(fe, name, &r);
		break;
	case VESPER_OP_LIST:
		vf_do_list(fe, &r);
		break;
	case VESPER_OP_KMSG:
		vf_fill_log(c);
		break;
	case VESPER_OP_CLOCK:
		break;	/* completed at once; guest_time_ns is stamped below */
	default:
		pr_info(VESPER_DRV_NAME ": unknown command op %u\n", fe->cmd.op);
		vf_fail(&r, -EINVAL, VESPER_STAGE_COMMAND);
		break;
	}

	if (r.error == -ESHUTDOWN)
		return -ESHUTDOWN;
	if (r.deferred)
		return 0;	/* the load job completes it */

	c->error = r.error;
	c->stage = r.error ? r.stage : VESPER_STAGE_DONE;
	if (r.error) {
		pr_info(VESPER_DRV_NAME ": command %llu (%s %s) failed at stage %u: %d\n",
			c->command_id, vesper_op_name(c->op), name, c->stage, c->error);
		vf_fill_log(c);
	}

	/* As late as possible before posting: the host brackets it with its round trip. */
	c->guest_time_ns = ktime_get_ns();
	ret = vf_post(fe, VESPER_REQ_COMPLETION, c, sizeof(*c), &id);
	if (ret) {
		vf_revoke_list_grant(fe);
		return ret == -ESHUTDOWN ? ret : 0;
	}
	if (fe->list_grant != VESPER_GRANT_REF_NONE)
		fe->list_cmpl_id = id;
	return 0;
}
