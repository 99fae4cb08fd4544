// SPDX-License-Identifier: Apache-2.0
/*
 * pci.c - bus 0 scan and BAR sizing over ports 0xCF8/0xCFC.
 *
 * The VMM assigns BARs before the guest starts and decodes them only there, so the
 * standard sizing protocol (all-ones, read back the mask) is followed by writing the
 * original address back; decoding is off while a BAR reads as a mask.
 */
#include <stdint.h>

#include "arch.h"
#include "console.h"
#include "lib.h"
#include "pci.h"

#define PCI_CONFIG_ADDRESS	0xcf8
#define PCI_CONFIG_DATA		0xcfc
#define PCI_ENABLE		0x80000000U
#define PCI_SLOTS		32
#define PCI_FUNCTIONS		8

#define PCI_VENDOR_DEVICE	0x00
#define PCI_COMMAND		0x04
#define PCI_HEADER_TYPE_DWORD	0x0c	/* header type is byte 2 of this dword */
#define PCI_BAR(n)		(0x10 + 4 * (n))
#define PCI_COMMAND_MEMORY	0x0002
#define PCI_COMMAND_MASTER	0x0004
#define PCI_HEADER_MULTIFUNCTION 0x80
#define PCI_BAR_IO		0x1
#define PCI_BAR_TYPE_MASK	0x6
#define PCI_BAR_TYPE_32		0x0
#define PCI_BAR_TYPE_64		0x4
#define PCI_BAR_FLAGS_MASK	0xfULL
#define PCI_NO_DEVICE		0xffff

#define VESPER_PCI_VENDOR	0x1af4
#define VESPER_PCI_DEVICE	0x1110
/* BAR2 must lie inside the identity map the VMM gives this program: [0, 4 GiB). */
#define IDENTITY_MAP_END	(1ULL << 32)

static uint32_t cfg_addr(uint8_t dev, uint8_t fn, uint8_t off)
{
	return PCI_ENABLE | ((uint32_t)dev << 11) | ((uint32_t)fn << 8) | (off & 0xfc);
}

static uint32_t cfg_read(uint8_t dev, uint8_t fn, uint8_t off)
{
	outl(PCI_CONFIG_ADDRESS, cfg_addr(dev, fn, off));
	return inl(PCI_CONFIG_DATA);
}

static void cfg_write(uint8_t dev, uint8_t fn, uint8_t off, uint32_t v)
{
	outl(PCI_CONFIG_ADDRESS, cfg_addr(dev, fn, off));
	outl(PCI_CONFIG_DATA, v);
}

/* Size of BAR n (its high dword too when is64); the BAR keeps its address. */
static uint64_t bar_size(uint8_t dev, uint8_t fn, unsigned int n, int is64)
{
	uint32_t lo = cfg_read(dev, fn, PCI_BAR(n)), hi = 0;
	uint64_t mask;

	cfg_write(dev, fn, PCI_BAR(n), 0xffffffffU);
	mask = cfg_read(dev, fn, PCI_BAR(n));
	cfg_write(dev, fn, PCI_BAR(n), lo);
	if (is64) {
		hi = cfg_read(dev, fn, PCI_BAR(n + 1));
		cfg_write(dev, fn, PCI_BAR(n + 1), 0xffffffffU);
		mask |= (uint64_t)cfg_read(dev, fn, PCI_BAR(n + 1)) << 32;
		cfg_write(dev, fn, PCI_BAR(n + 1), hi);
	} else {
		mask |= 0xffffffff00000000ULL;
	}
	mask &= ~PCI_BAR_FLAGS_MASK;
	return mask ? ~mask + 1 : 0;
}

static int bar_address(uint8_t dev, uint8_t fn, unsigned int n, uint32_t want_type,
		       uint64_t *addr)
{
	uint32_t lo = cfg_read(dev, fn, PCI_BAR(n));

	if (lo & PCI_BAR_IO || (lo & PCI_BAR_TYPE_MASK) != want_type) {
		pr("vesper-mini: pci 00:%02x.%u: BAR%u is %#x, not a %s memory BAR", dev, fn,
		   n, lo, want_type == PCI_BAR_TYPE_64 ? "64-bit" : "32-bit");
		return -EINVAL;
	}
	*addr = lo & ~(uint32_t)PCI_BAR_FLAGS_MASK;
	if (want_type == PCI_BAR_TYPE_64)
		*addr |= (uint64_t)cfg_read(dev, fn, PCI_BAR(n + 1)) << 32;
	return 0;
}

static int setup(uint8_t dev, uint8_t fn, struct pci_vesper *v)
{
	uint32_t cmd = cfg_read(dev, fn, PCI_COMMAND) & 0xffff;
	int ret;

	v->dev = dev;
	v->fn = fn;
	ret = bar_address(dev, fn, 0, PCI_BAR_TYPE_32, &v->bar0);
	if (!ret)
		ret = bar_address(dev, fn, 2, PCI_BAR_TYPE_64, &v->bar2);
	if (ret)
		return ret;

	/* No decoding while a BAR reads back as a size mask. */
	cfg_write(dev, fn, PCI_COMMAND, cmd & ~(uint32_t)PCI_COMMAND_MEMORY);
	v->bar0_size = bar_size(dev, fn, 0, 0);
	v->bar2_size = bar_size(dev, fn, 2, 1);
	cfg_write(dev, fn, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

	pr("vesper-mini: pci 00:%02x.%u: Vesper device, BAR0 %#lx (%lu bytes), BAR2 %#lx (%lu bytes)",
	   dev, fn, (unsigned long)v->bar0, (unsigned long)v->bar0_size,
	   (unsigned long)v->bar2, (unsigned long)v->bar2_size);
	if (!v->bar0 || v->bar0_size < 16) {
		pr("vesper-mini: BAR0 is unassigned or too small for the registers");
		return -EINVAL;
	}
	if (!v->bar2 || !v->bar2_size) {
		pr("vesper-mini: BAR2 is unassigned (no shared memory)");
		return -EINVAL;
	}
	if (v->bar2 >= IDENTITY_MAP_END || v->bar2_size > IDENTITY_MAP_END - v->bar2) {
		pr("vesper-mini: BAR2 lies above 4 GiB, outside this program's identity map");
		return -EINVAL;
	}
	return 0;
}

int pci_find_vesper(struct pci_vesper *out)
{
	for (uint8_t dev = 0; dev < PCI_SLOTS; dev++) {
		uint8_t nfn = 1;

		for (uint8_t fn = 0; fn < nfn; fn++) {
			uint32_t id = cfg_read(dev, fn, PCI_VENDOR_DEVICE);

			if ((id & 0xffff) == PCI_NO_DEVICE)
				continue;
			if (fn == 0 && (cfg_read(dev, 0, PCI_HEADER_TYPE_DWORD) >> 16) &
					       PCI_HEADER_MULTIFUNCTION)
				nfn = PCI_FUNCTIONS;
			if ((id & 0xffff) == VESPER_PCI_VENDOR && (id >> 16) == VESPER_PCI_DEVICE)
				return setup(dev, fn, out);
		}
	}
	pr("vesper-mini: no Vesper device (%04x:%04x) on PCI bus 0", VESPER_PCI_VENDOR,
	   VESPER_PCI_DEVICE);
	return -ENODEV;
}
