// SPDX-License-Identifier: GPL-2.0
/*
 * vesper_loader: module load/unload/list from kernel context.
 *
 * This is the only file of the frontend that depends on kernel internals; it is
 * written for (and verified on) Linux 6.1 x86-64 (Debian 12 cloud kernel). See
 * README.md for the technique and its limits.
 *
 * Technique, in short:
 *  - kallsyms_lookup_name is not exported (since 5.7): register a kprobe on it, read
 *    the address the kprobe core resolved, unregister. KASLR makes addresses from
 *    System.map useless, the running kernel's kallsyms is the only truth.
 *  - With it resolve mm_alloc, arch_pick_mmap_layout, __x64_sys_init_module,
 *    __x64_sys_delete_module and the `modules` list head.
 *  - There is no set_fs() any more, so the syscall bodies need real user memory: the
 *    worker kthread builds a private, empty user address space (mm_alloc +
 *    arch_pick_mmap_layout), adopts it with kthread_use_mm, vm_mmap()s an anonymous
 *    range, copy_to_user()s the arguments there, and calls the syscall wrapper with a
 *    struct pt_regs holding the user pointers. Then it unmaps and drops the mm again.
 *    Capability checks pass (kthreads have full capabilities); modules_disabled,
 *    lockdown and signature policy are still enforced by the kernel.
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/version.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/resource.h>
#include <linux/uaccess.h>
#include <linux/fcntl.h>
#include <linux/rculist.h>
#include <linux/string.h>
#include <asm/ptrace.h>

#include "vesper_loader.h"

#ifndef CONFIG_X86_64
#error "vesper_loader.c supports x86-64 only (syscall wrappers take struct pt_regs)"
#endif
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 8, 0)
#error "vesper_loader.c needs Linux >= 5.8 (kthread_use_mm)"
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#error "struct module lost core_layout in 6.4 (mod->mem[]): port vesper_loader_list()"
#endif
#ifndef CONFIG_KPROBES
#error "vesper_loader.c needs CONFIG_KPROBES to find kallsyms_lookup_name"
#endif

/* Stack rlimit handed to arch_pick_mmap_layout (only steers the mmap base). */
#define VESPER_LOADER_STACK_RLIMIT (8UL << 20)
/* Longest walk of the module list when validating the resolved `modules` head. */
#define VESPER_LOADER_MAX_MODULES 65536

typedef unsigned long (*kallsyms_lookup_name_t)(const char *name);
typedef struct mm_struct *(*mm_alloc_t)(void);
typedef void (*arch_pick_mmap_layout_t)(struct mm_struct *mm,
					struct rlimit *rlim_stack);
typedef long (*syscall_fn_t)(const struct pt_regs *regs);

static struct {
	kallsyms_lookup_name_t lookup;
	mm_alloc_t mm_alloc;
	arch_pick_mmap_layout_t pick_mmap_layout;
	syscall_fn_t sys_init_module;
	syscall_fn_t sys_delete_module;
	struct list_head *modules;
} vl;

static kallsyms_lookup_name_t vesper_find_kallsyms_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	kallsyms_lookup_name_t fn;
	int ret;

	ret = register_kprobe(&kp);
	if (ret) {
		pr_err("vesper_front: loader: cannot find kallsyms_lookup_name (register_kprobe: %d)\n",
		       ret);
		return NULL;
	}
	fn = (kallsyms_lookup_name_t)kp.addr;
	unregister_kprobe(&kp);
	return fn;
}

static unsigned long vesper_lookup(const char *name)
{
	unsigned long addr = vl.lookup(name);

	if (!addr)
		pr_err("vesper_front: loader: symbol %s not found\n", name);
	return addr;
}

/*
 * The resolved `modules` must be the list this module is linked into: walk the (known
 * valid) list starting at our own entry and look for the candidate head, never
 * dereferencing the candidate itself.
 */
static bool vesper_modules_head_ok(struct list_head *head)
{
	struct list_head *pos;
	unsigned int n = 0;
	bool found = false;

	rcu_read_lock();
	for (pos = rcu_dereference(list_next_rcu(&THIS_MODULE->list));
	     pos != &THIS_MODULE->list && n < VESPER_LOADER_MAX_MODULES;
	     pos = rcu_dereference(list_next_rcu(pos)), n++) {
		if (pos == head) {
			found = true;
			break;
		}
	}
	rcu_read_unlock();
	return found;
}

int vesper_loader_init(void)
{
	unsigned long addr;

	memset(&vl, 0, sizeof(vl));

	vl.lookup = vesper_find_kallsyms_lookup_name();
	if (!vl.lookup)
		return -ENOENT;

	/* The module list only needs kallsyms; load/unload need the rest too. */
	addr = vesper_lookup("modules");
	if (addr && vesper_modules_head_ok((struct list_head *)addr))
		vl.modules = (struct list_head *)addr;
	else if (addr)
		pr_err("vesper_front: loader: symbol modules at %px is not the module list\n",
		       (void *)addr);

#ifdef CONFIG_X86_KERNEL_IBT
	/*
	 * With IBT, functions whose address is never taken lose their ENDBR and an
	 * indirect call to them faults. Not handled (not needed on the target kernel).
	 */
	pr_err("vesper_front: loader: CONFIG_X86_KERNEL_IBT kernels are not supported, load/unload disabled\n");
	return -ENOENT;
#endif

	addr = vesper_lookup("mm_alloc");
	if (!addr)
		goto missing;
	vl.mm_alloc = (mm_alloc_t)addr;

	addr = vesper_lookup("arch_pick_mmap_layout");
	if (!addr)
		goto missing;
	vl.pick_mmap_layout = (arch_pick_mmap_layout_t)addr;

	addr = vesper_lookup("__x64_sys_init_module");
	if (!addr)
		goto missing;
	vl.sys_init_module = (syscall_fn_t)addr;

	addr = vesper_lookup("__x64_sys_delete_module");
	if (!addr)
		goto missing;
	vl.sys_delete_module = (syscall_fn_t)addr;

	if (!vl.modules)
		return -ENOENT;
	pr_info("vesper_front: loader ready (kallsyms_lookup_name at %pS)\n", vl.lookup);
	return 0;

missing:
	vl.mm_alloc = NULL;
	vl.pick_mmap_layout = NULL;
	vl.sys_init_module = NULL;
	vl.sys_delete_module = NULL;
	return -ENOENT;
}

void vesper_loader_exit(void)
{
	memset(&vl, 0, sizeof(vl));
}

bool vesper_loader_can_load(void)
{
	return vl.mm_alloc && vl.pick_mmap_layout && vl.sys_init_module &&
	       vl.sys_delete_module;
}

/* A private user address space adopted by the calling kthread, with one mapping. */
struct vesper_user_ctx {
	struct mm_struct *mm;
	unsigned long addr;
	size_t len;
};

static int vesper_user_enter(struct vesper_user_ctx *ctx, size_t len)
{
	struct rlimit rlim = {
		.rlim_cur = VESPER_LOADER_STACK_RLIMIT,
		.rlim_max = VESPER_LOADER_STACK_RLIMIT,
	};
	unsigned long addr;

	ctx->mm = NULL;
	ctx->addr = 0;
	ctx->len = PAGE_ALIGN(len);
	if (!ctx->len || ctx->len < len)
		return -EINVAL;
	if (!(current->flags & PF_KTHREAD) || current->mm)
		return -EINVAL;

	ctx->mm = vl.mm_alloc();
	if (!ctx->mm)
		return -ENOMEM;
	/* mm_alloc leaves task_size to exec (setup_new_exec); we are no exec. */
	if (!ctx->mm->task_size)
		ctx->mm->task_size = TASK_SIZE_MAX;
	vl.pick_mmap_layout(ctx->mm, &rlim);

	kthread_use_mm(ctx->mm);
	addr = vm_mmap(NULL, 0, ctx->len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, 0);
	if (IS_ERR_VALUE(addr)) {
		kthread_unuse_mm(ctx->mm);
		mmput(ctx->mm);
		ctx->mm = NULL;
		return (int)addr;
	}
	ctx->addr = addr;
	return 0;
}

static void vesper_user_leave(struct vesper_user_ctx *ctx)
{
	if (!ctx->mm)
		return;
	if (ctx->addr)
		vm_munmap(ctx->addr, ctx->len);
	kthread_unuse_mm(ctx->mm);
	mmput(ctx->mm);
	ctx->mm = NULL;
	ctx->addr = 0;
}

int vesper_loader_load(const void *image, size_t len, const char *params,
		       unsigned int *stage)
{
	struct vesper_user_ctx ctx;
	struct pt_regs regs;
	size_t plen = strlen(params);
	unsigned long uimage, uparams;
	int ret;

	*stage = VESPER_STAGE_PREPARE;
	if (!vesper_loader_can_load())
		return -ENOSYS;
	if (!len || len > SIZE_MAX / 2 || plen > SIZE_MAX / 2)
		return -EINVAL;

	ret = vesper_user_enter(&ctx, len + plen + 1);
	if (ret)
		return ret;

	uimage = ctx.addr;
	uparams = ctx.addr + len;
	if (copy_to_user((void __user *)uimage, image, len) ||
	    copy_to_user((void __user *)uparams, params, plen + 1)) {
		ret = -EFAULT;
		goto out;
	}

	memset(&regs, 0, sizeof(regs));
	regs.di = uimage;
	regs.si = len;
	regs.dx = uparams;
	*stage = VESPER_STAGE_INIT_MODULE;
	ret = (int)vl.sys_init_module(&regs);
out:
	vesper_user_leave(&ctx);
	return ret;
}

int vesper_loader_unload(const char *name, unsigned int flags, unsigned int *stage)
{
	struct vesper_user_ctx ctx;
	struct pt_regs regs;
	size_t nlen = strlen(name);
	int ret;

	*stage = VESPER_STAGE_PREPARE;
	if (!vesper_loader_can_load())
		return -ENOSYS;

	ret = vesper_user_enter(&ctx, nlen + 1);
	if (ret)
		return ret;

	if (copy_to_user((void __user *)ctx.addr, name, nlen + 1)) {
		ret = -EFAULT;
		goto out;
	}

	memset(&regs, 0, sizeof(regs));
	regs.di = ctx.addr;
	regs.si = O_NONBLOCK |
		  ((flags & VESPER_UNLOAD_FLAG_FORCE) ? O_TRUNC : 0);
	*stage = VESPER_STAGE_DELETE_MODULE;
	ret = (int)vl.sys_delete_module(&regs);
out:
	vesper_user_leave(&ctx);
	return ret;
}

int vesper_loader_list(struct vesper_module_entry *out, unsigned int max,
		       unsigned int *total)
{
	struct module *mod;
	unsigned int n = 0, seen = 0;

	*total = 0;
	if (!vl.modules)
		return -ENOSYS;

	rcu_read_lock();
	list_for_each_entry_rcu(mod, vl.modules, list) {
		if (seen++ >= VESPER_LOADER_MAX_MODULES)
			break;
		if (n >= max)
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		strscpy((char *)out[n].name, mod->name, sizeof(out[n].name));
		out[n].size = mod->core_layout.size;
		out[n].refcount = module_refcount(mod);
		out[n].state = (uint32_t)mod->state;
		out[n].flags = mod == THIS_MODULE ? VESPER_MODULE_FLAG_FRONTEND : 0;
		n++;
	}
	rcu_read_unlock();

	*total = seen;
	return n;
}
