/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pci.h - finding the Vesper device on PCI bus 0 through configuration mechanism #1.
 */
#ifndef MINI_PCI_H
#define MINI_PCI_H

#include <stdint.h>

struct pci_vesper {
	uint8_t dev;
	uint8_t fn;
	uint64_t bar0;		/* registers, 32-bit MMIO */
	uint64_t bar0_size;
	uint64_t bar2;		/* shared region, 64-bit MMIO */
	uint64_t bar2_size;
};

/*
 * Finds 1af4:1110 on bus 0, sizes BAR0 and BAR2 (their addresses are put back), and
 * enables memory decoding and bus mastering. Returns 0, -ENODEV (no such device), or
 * -EINVAL (a BAR is not what an ivshmem-doorbell device has); says why on the console.
 */
int pci_find_vesper(struct pci_vesper *out);

#endif /* MINI_PCI_H */
