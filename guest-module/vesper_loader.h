/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vesper_loader: load and unload kernel modules from kernel context, and list the
 * loaded ones. Every kernel-version-specific trick of the frontend lives behind this
 * interface (see README.md); the other files use exported, stable API only.
 */
#ifndef VESPER_LOADER_H
#define VESPER_LOADER_H

#include <linux/types.h>
#include "vesper_abi.h"

/*
 * Resolve the unexported kernel symbols the loader needs. Returns 0, or -ENOENT after a
 * pr_err naming the first symbol that could not be found; the frontend keeps working
 * without a loader, and the calls below then return -ENOSYS.
 */
int vesper_loader_init(void);

/* Forget the resolved symbols. */
void vesper_loader_exit(void);

/* True when load/unload are available (vesper_loader_init succeeded for them). */
bool vesper_loader_can_load(void);

/*
 * Load the module image [image, image + len) with parameter string params (may be
 * empty, never NULL), as init_module(2) would, from the calling kernel thread. Must be
 * called from a kernel thread that has no mm of its own.
 *
 * Returns 0 or a negative errno. *stage is set to VESPER_STAGE_PREPARE when the failure
 * happened before the kernel's init_module ran (memory, address space, symbols), else to
 * VESPER_STAGE_INIT_MODULE (then the return value is init_module's).
 */
int vesper_loader_load(const void *image, size_t len, const char *params,
		       unsigned int *stage);

/*
 * Unload module name as delete_module(name, O_NONBLOCK | (force ? O_TRUNC : 0)) would.
 * flags: VESPER_UNLOAD_FLAG_*. *stage as for vesper_loader_load (PREPARE or
 * DELETE_MODULE).
 */
int vesper_loader_unload(const char *name, unsigned int flags, unsigned int *stage);

/*
 * Fill out[0 .. max) with the loaded modules (name, core size, refcount, state;
 * flags = MODULE_FLAG_FRONTEND for this module, other flags left 0). Returns the
 * number of entries written (at most max) and stores the number of modules seen in
 * *total; -ENOSYS when the module list could not be located.
 */
int vesper_loader_list(struct vesper_module_entry *out, unsigned int max,
		       unsigned int *total);

#endif /* VESPER_LOADER_H */
