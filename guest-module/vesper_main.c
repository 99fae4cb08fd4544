// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_front: guest frontend of Vesper for the ivshmem-doorbell PCI device.
 *
 * Implements shared-abi/PROTOCOL.md (ABI v1): one worker kthread posts requests into
 * the request ring, consumes the host's answers from the response ring and executes
 * host commands (load, unload, list modules, kernel log); a module's init runs in a
 * load-job kthread of its own, so commands are served while it runs, and the worker
 * posts its completion when it returns. Everything host-written is
 * untrusted: ring slots are copied once into private memory and parsed only there,
 * every length and index is checked. Kernel-version-specific code lives in
 * vesper_loader.c only.
 *
 * This file is the top of the module: the PCI driver (probe, remove), the protocol's
 * start-up (region check, reset, HELLO) and the worker's loop; it wires the layers
 * below together. Layers, lowest first: vesper_transport.c (region, grants, rings,
 * waiting), vesper_relay.c (relay channels), vesper_loader.c and vesper_commands.c
 * (host commands); none of them calls into a file above it.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/crc32.h>
#include <linux/kmsg_dump.h>
#include <linux/utsname.h>
#include <linux/cpumask.h>
#include <linux/string.h>
#include <linux/list.h>
#include <linux/err.h>
#include <linux/bitmap.h>
#include <linux/timekeeping.h>
#include <linux/spinlock.h>
#include <linux/atomic.h>
#define INCLUDE_VERMAGIC
#include <linux/vermagic.h>

#include "vesper_front.h"
#include "vesper_commands.h"
#include "vesper_loader.h"
#include "vesper_relay.h"

static_assert(sizeof(struct vesper_msg_header) + VESPER_SLOT_PAYLOAD_SIZE == VESPER_SLOT_SIZE);
static_assert(sizeof(struct vesper_completion_request) <= VESPER_SLOT_PAYLOAD_SIZE);
static_assert(sizeof(struct vesper_hello_request) <= VESPER_SLOT_PAYLOAD_SIZE);

/* ---- the transport's upcalls --------------------------------------------------- */

/* A response nobody waits for right now. */
static void vf_stray_response(struct vesper_front *fe, const struct vesper_msg_header *h)
{
	if (vr_response(fe, h))
		return;	/* answer to a relay open/close */
	if (h->kind == (VESPER_REQ_COMPLETION | VESPER_RSP_FLAG) &&
	    h->id == fe->list_cmpl_id && fe->list_grant != VESPER_GRANT_REF_NONE) {
		/* The host copied the module list out. */
		vf_revoke_list_grant(fe);
		return;
	}
	if (h->kind == (VESPER_REQ_COMPLETION | VESPER_RSP_FLAG))
		return;	/* plain completion acknowledgement */
	pr_warn_ratelimited(VESPER_DRV_NAME ": dropping unexpected response kind %#x id %llu\n",
			    h->kind, h->id);
}

/*
 * What the worker does while it waits (called by the transport's wait loops once HELLO
 * is answered): post queued relay requests, and the completions of finished loads.
 */
static void vf_pump_work(struct vesper_front *fe)
{
	if (atomic_xchg(&fe->relay_work, 0))
		vr_pump(fe);
	if (atomic_xchg(&fe->load_work, 0))
		vf_pump_loads(fe);
}

/* The transport's upcalls into this layer (it names no file above it). */
static const struct vesper_front_ops vf_ops = {
	.pump = vf_pump_work,
	.stray = vf_stray_response,
};

/* ---- worker ---------------------------------------------------------------------- */

/* Protocol start-up step 2: forget any previous life of the region. */
static void vf_reset_region(struct vesper_front *fe)
{
	struct vesper_region_header *hdr = vf_hdr(fe);
	u32 ref, gen;

	/*
	 * The new generation goes out before the grants are freed, so a host that finds
	 * a grant of an open channel gone can tell a restart from a misbehaving guest.
	 */
	gen = READ_ONCE(hdr->generation) + 1;
	if (!gen)
		gen = 1;
	fe->generation = gen;
	WRITE_ONCE(hdr->generation, gen);
	WRITE_ONCE(hdr->guest_features, 0);
	smp_wmb();

	for (ref = 0; ref < VESPER_GRANT_ENTRIES; ref++) {
		WRITE_ONCE(vf_grant_entry(fe, ref)->state, VESPER_GRANT_STATE_FREE);
		fe->grant_used[ref] = false;
	}
	fe->list_grant = VESPER_GRANT_REF_NONE;

	vf_rings_reset(fe);
	smp_mb();
}

/* Protocol start-up step 3. Returns 0, or -ESHUTDOWN / -EPROTO / host error. */
static int vf_hello(struct vesper_front *fe)
{
	struct vesper_hello_request *hello;
	struct vesper_hello_response rsp;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);
	u64 id;
	int ret;

	hello = kzalloc(sizeof(*hello), GFP_KERNEL);
	if (!hello)
		return -ENOMEM;
	hello->frontend_version = VESPER_FRONTEND_VERSION;
	hello->nr_cpus = num_online_cpus();
	hello->page_size = PAGE_SIZE;
	hello->region_size = fe->bar_size;
	strscpy((char *)hello->kernel_release, utsname()->release,
		sizeof(hello->kernel_release));
	strscpy((char *)hello->vermagic, VERMAGIC_STRING, sizeof(hello->vermagic));

	ret = vf_post(fe, VESPER_REQ_HELLO, hello, sizeof(*hello), &id);
	kfree(hello);
	if (ret)
		return ret;
	ret = vf_wait(fe, id, VESPER_REQ_HELLO, 0, sizeof(rsp));
	if (ret)
		return ret;
	if (h->status) {
		pr_err(VESPER_DRV_NAME ": host refused HELLO: %d\n", h->status);
		return vf_host_error(h->status);
	}
	memcpy(&rsp, vf_rsp_payload(fe), sizeof(rsp));
	fe->chunk_size = (u32)min3((u64)rsp.max_chunk, (u64)VESPER_MAX_CHUNK,
				   vf_data_space(fe));
	pr_info(VESPER_DRV_NAME ": host v%u, generation %u, chunk %u bytes, host max image %llu\n",
		rsp.host_version, fe->generation, fe->chunk_size, rsp.max_image_size);
	return 0;
}

static int vf_worker(void *data)
{
	struct vesper_front *fe = data;
	struct vesper_msg_header *h = vf_rsp_hdr(fe);
	int ret;

	vf_reset_region(fe);
	ret = vf_hello(fe);
	if (ret) {
		if (ret != -ESHUTDOWN)
			pr_err(VESPER_DRV_NAME ": start-up failed (%d), frontend idle\n", ret);
		goto idle;
	}
	smp_wmb();
	WRITE_ONCE(vf_hdr(fe)->guest_state, VESPER_GUEST_STATE_UP);
	fe->up = true;

	while (!kthread_should_stop()) {
		u64 id;

		ret = vf_post(fe, VESPER_REQ_WAIT_COMMAND, NULL, 0, &id);
		if (ret == -ESHUTDOWN)
			break;
		if (ret) {
			vf_sleep(fe, HZ);
			continue;
		}
		ret = vf_wait(fe, id, VESPER_REQ_WAIT_COMMAND, 0,
			      offsetof(struct vesper_command_response, params));
		if (ret == -ESHUTDOWN)
			break;
		if (ret) {
			vf_sleep(fe, HZ);
			continue;
		}
		if (h->status) {
			pr_warn_ratelimited(VESPER_DRV_NAME ": host answered WAIT_COMMAND with %d\n",
					    h->status);
			vf_sleep(fe, HZ);
			continue;
		}
		/* Copy the command once; a short one keeps zeroes in the tail. */
		memset(&fe->cmd, 0, sizeof(fe->cmd));
		memcpy(&fe->cmd, vf_rsp_payload(fe),
		       min_t(u32, h->len, sizeof(fe->cmd)));
		if (fe->cmd.op == VESPER_OP_LOAD &&
		    h->len < offsetof(struct vesper_command_response, params) +
			     min_t(u32, fe->cmd.params_len, VESPER_PARAMS_LEN))
			fe->cmd.params_len = VESPER_PARAMS_LEN;	/* rejected as malformed */
		if (vf_run_command(fe) == -ESHUTDOWN)
			break;
	}
idle:
	while (!kthread_should_stop())
		vf_sleep(fe, HZ);
	return 0;
}

/* ---- PCI ------------------------------------------------------------------------ */

/* Protocol start-up step 1: is this ivshmem device a Vesper region? */
static int vf_check_region(struct vesper_front *fe)
{
	struct vesper_region_header *hdr = vf_hdr(fe);
	u64 magic = READ_ONCE(hdr->magic);
	u32 abi = READ_ONCE(hdr->abi_version);
	u32 state = READ_ONCE(hdr->host_state);
	u64 size = READ_ONCE(hdr->region_size);

	if (magic != VESPER_REGION_MAGIC) {
		pr_info(VESPER_DRV_NAME ": %s: ivshmem region magic %#llx is not Vesper's, not binding\n",
			pci_name(fe->pdev), magic);
		return -ENODEV;
	}
	if (abi != VESPER_ABI_VERSION) {
		pr_info(VESPER_DRV_NAME ": %s: Vesper ABI %u, this frontend speaks %u, not binding\n",
			pci_name(fe->pdev), abi, VESPER_ABI_VERSION);
		return -ENODEV;
	}
	if (state != VESPER_HOST_STATE_READY) {
		pr_info(VESPER_DRV_NAME ": %s: Vesper host state %u is not ready, not binding\n",
			pci_name(fe->pdev), state);
		return -ENODEV;
	}
	fe->region_size = min(size, fe->bar_size);
	if (fe->bar_size < VESPER_MIN_REGION_SIZE ||
	    fe->region_size < VESPER_MIN_REGION_SIZE) {
		pr_info(VESPER_DRV_NAME ": %s: region of %llu bytes (BAR %llu) is below the %u minimum, not binding\n",
			pci_name(fe->pdev), size, fe->bar_size, VESPER_MIN_REGION_SIZE);
		return -ENODEV;
	}
	if (size != fe->bar_size)
		pr_warn(VESPER_DRV_NAME ": %s: header says %llu bytes, BAR2 has %llu; using %llu\n",
			pci_name(fe->pdev), size, fe->bar_size, fe->region_size);
	return 0;
}

static int vf_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vesper_front *fe;
	int ret, nvec;

	fe = kzalloc(sizeof(*fe), GFP_KERNEL);
	if (!fe)
		return -ENOMEM;
	fe->pdev = pdev;
	fe->ops = &vf_ops;
	init_waitqueue_head(&fe->wq);
	INIT_LIST_HEAD(&fe->pushed);
	INIT_LIST_HEAD(&fe->load_jobs);
	fe->list_grant = VESPER_GRANT_REF_NONE;

	fe->rsp = kmalloc(VESPER_SLOT_SIZE, GFP_KERNEL);
	fe->cmpl = kmalloc(sizeof(*fe->cmpl), GFP_KERNEL);
	if (!fe->rsp || !fe->cmpl) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_free;
	ret = pci_request_regions(pdev, VESPER_DRV_NAME);
	if (ret)
		goto err_disable;

	fe->regs = pci_iomap(pdev, 0, 0);
	if (!fe->regs) {
		ret = -ENOMEM;
		goto err_regions;
	}
	fe->bar_size = pci_resource_len(pdev, 2);
	if (!fe->bar_size) {
		pr_info(VESPER_DRV_NAME ": %s: no BAR2 (no shared memory yet?), not binding\n",
			pci_name(pdev));
		ret = -ENODEV;
		goto err_iounmap;
	}
	fe->shm = memremap(pci_resource_start(pdev, 2), fe->bar_size, MEMREMAP_WB);
	if (!fe->shm) {
		ret = -ENOMEM;
		goto err_iounmap;
	}

	ret = vf_check_region(fe);
	if (ret)
		goto err_memunmap;
	ret = vf_pages_setup(fe);
	if (ret)
		goto err_memunmap;

	pci_set_master(pdev);
	nvec = pci_alloc_irq_vectors(pdev, 1, 2, PCI_IRQ_MSIX);
	if (nvec > 0) {
		ret = request_irq(pci_irq_vector(pdev, 0), vf_irq, 0, VESPER_DRV_NAME, fe);
		if (ret) {
			pci_free_irq_vectors(pdev);
			pr_info(VESPER_DRV_NAME ": %s: request_irq failed (%d), polling\n",
				pci_name(pdev), ret);
		} else {
			fe->have_irq = true;
		}
	} else {
		pr_info(VESPER_DRV_NAME ": %s: no MSI-X (%d), polling every 100 ms\n",
			pci_name(pdev), nvec);
	}

	pci_set_drvdata(pdev, fe);
	fe->worker = kthread_run(vf_worker, fe, "vesper-front");
	if (IS_ERR(fe->worker)) {
		ret = PTR_ERR(fe->worker);
		goto err_irq;
	}
	vr_front_bound(fe);
	pr_info(VESPER_DRV_NAME ": %s: bound to Vesper region of %llu bytes (%s)\n",
		pci_name(pdev), fe->region_size, fe->have_irq ? "MSI-X" : "polling");
	return 0;

err_irq:
	if (fe->have_irq) {
		free_irq(pci_irq_vector(pdev, 0), fe);
		pci_free_irq_vectors(pdev);
	}
	pci_clear_master(pdev);
err_memunmap:
	bitmap_free(fe->pages_map);
	memunmap(fe->shm);
err_iounmap:
	pci_iounmap(pdev, fe->regs);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_free:
	kfree(fe->cmpl);
	kfree(fe->rsp);
	kfree(fe);
	return ret;
}

static void vf_remove(struct pci_dev *pdev)
{
	struct vesper_front *fe = pci_get_drvdata(pdev);
	struct vesper_load_job *job, *jtmp;
	struct vesper_pushed *p, *tmp;
	u32 ref;

	/* Open relay channels are closed with the host while the worker still runs. */
	vr_front_unbinding(fe);
	kthread_stop(fe->worker);
	/* Relay writers stop touching the region before it goes away. */
	vr_front_unbound(fe);
	/* A module init still running is waited for: its job thread holds fe. */
	list_for_each_entry_safe(job, jtmp, &fe->load_jobs, node)
		vf_reap_load_job(fe, job);

	for (ref = 0; ref < VESPER_GRANT_ENTRIES; ref++)
		WRITE_ONCE(vf_grant_entry(fe, ref)->state, VESPER_GRANT_STATE_FREE);
	smp_wmb();
	WRITE_ONCE(vf_hdr(fe)->guest_state, VESPER_GUEST_STATE_DOWN);
	smp_mb();

	if (fe->have_irq) {
		free_irq(pci_irq_vector(pdev, 0), fe);
		pci_free_irq_vectors(pdev);
	}
	pci_clear_master(pdev);
	memunmap(fe->shm);
	pci_iounmap(pdev, fe->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);

	list_for_each_entry_safe(p, tmp, &fe->pushed, node) {
		list_del(&p->node);
		kfree(p);
	}
	bitmap_free(fe->pages_map);
	kfree(fe->cmpl);
	kfree(fe->rsp);
	kfree(fe);
	pr_info(VESPER_DRV_NAME ": %s: unbound\n", pci_name(pdev));
}

static const struct pci_device_id vf_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },	/* ivshmem (plain or doorbell) */
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, vf_ids);

static struct pci_driver vf_driver = {
	.name = VESPER_DRV_NAME,
	.id_table = vf_ids,
	.probe = vf_probe,
	.remove = vf_remove,
};

static int __init vf_init(void)
{
	int ret = vesper_loader_init();

	if (ret)
		pr_err(VESPER_DRV_NAME ": loader unavailable (%d): load/unload will fail with -ENOSYS\n",
		       ret);
	ret = pci_register_driver(&vf_driver);
	if (ret)
		vesper_loader_exit();
	return ret;
}

static void __exit vf_exit(void)
{
	pci_unregister_driver(&vf_driver);
	vesper_loader_exit();
}

module_init(vf_init);
module_exit(vf_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Vesper guest frontend (ivshmem-doorbell): pushed kernel probe modules");
MODULE_VERSION("1");
