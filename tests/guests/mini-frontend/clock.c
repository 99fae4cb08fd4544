// SPDX-License-Identifier: Apache-2.0
/*
 * clock.c - where the nanoseconds of completions (guest_time_ns) and relay records
 * (timestamp_ns) come from. In order of preference:
 *  1. kvmclock, when the hypervisor leaves say KVM with KVM_FEATURE_CLOCKSOURCE2: the
 *     host publishes system time and the TSC scale in a page of ours (what Linux uses
 *     under KVM);
 *  2. CPUID 0x15: TSC/crystal ratio and the crystal frequency;
 *  3. hypervisor leaf 0x40000010: TSC frequency in kHz (VMware's convention);
 *  4. CPUID 0x16: the processor base frequency (the TSC rate on constant-TSC parts).
 * Without any of these there is no calibrated clock and OP_CLOCK is refused.
 */
#include <stdint.h>

#include "arch.h"
#include "clock.h"
#include "lib.h"

#define CPUID_FEATURES			0x1
#define CPUID_FEATURES_ECX_HYPERVISOR	(1U << 31)
#define CPUID_TSC_CRYSTAL		0x15
#define CPUID_FREQUENCY			0x16
#define CPUID_HV_BASE			0x40000000
#define CPUID_KVM_FEATURES		0x40000001
#define KVM_FEATURE_CLOCKSOURCE2	(1U << 3)
#define CPUID_HV_TIMING			0x40000010
#define MSR_KVM_SYSTEM_TIME_NEW		0x4b564d01
#define KVM_SYSTEM_TIME_ENABLE		0x1ULL
#define NSEC_PER_SEC			1000000000ULL
/* kvmclock version stuck odd (update in progress) this many reads: give up on it. */
#define PVCLOCK_MAX_RETRIES		1000000

/* The kvmclock page layout (KVM's pvclock_vcpu_time_info; not a Vesper wire struct). */
struct pvclock_time_info {
	uint32_t version;
	uint32_t pad0;
	uint64_t tsc_timestamp;
	uint64_t system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad[2];
};
_Static_assert(sizeof(struct pvclock_time_info) == 32, "pvclock layout");

enum clock_kind { CLOCK_NONE, CLOCK_KVM, CLOCK_TSC };

static struct pvclock_time_info pvclock __attribute__((aligned(64)));
static enum clock_kind kind;
static const char *source;	/* NULL: none (no initialised data, see start.S) */
static uint64_t tsc0;
static uint64_t ns_mult;	/* ns = tsc delta * ns_mult >> 32 */

static int is_kvm(void)
{
	uint32_t a, b, c, d;

	cpuid(CPUID_FEATURES, 0, &a, &b, &c, &d);
	if (!(c & CPUID_FEATURES_ECX_HYPERVISOR))
		return 0;
	cpuid(CPUID_HV_BASE, 0, &a, &b, &c, &d);
	/* "KVMKVMKVM\0\0\0" */
	return b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d;
}

static uint32_t hypervisor_max_leaf(void)
{
	uint32_t a, b, c, d;

	cpuid(CPUID_FEATURES, 0, &a, &b, &c, &d);
	if (!(c & CPUID_FEATURES_ECX_HYPERVISOR))
		return 0;
	cpuid(CPUID_HV_BASE, 0, &a, &b, &c, &d);
	return a;
}

static int try_kvmclock(void)
{
	uint32_t a, b, c, d;

	if (!is_kvm())
		return 0;
	cpuid(CPUID_KVM_FEATURES, 0, &a, &b, &c, &d);
	if (!(a & KVM_FEATURE_CLOCKSOURCE2))
		return 0;
	memset(&pvclock, 0, sizeof(pvclock));
	/* Identity-mapped: the virtual address is the guest physical one. */
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uintptr_t)&pvclock | KVM_SYSTEM_TIME_ENABLE);
	kind = CLOCK_KVM;
	if (!clock_ns()) {
		kind = CLOCK_NONE;
		wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
		return 0;
	}
	source = "kvmclock";
	return 1;
}

static int use_tsc(uint64_t hz, const char *what)
{
	if (!hz)
		return 0;
	tsc0 = rdtsc();
	/* 1e9 << 32 still fits in 64 bits. */
	ns_mult = (NSEC_PER_SEC << 32) / hz;
	kind = CLOCK_TSC;
	source = what;
	return 1;
}

static uint64_t tsc_hz_cpuid(void)
{
	uint32_t max, a, b, c, d;

	cpuid(0, 0, &max, &b, &c, &d);
	if (max >= CPUID_TSC_CRYSTAL) {
		cpuid(CPUID_TSC_CRYSTAL, 0, &a, &b, &c, &d);
		if (a && b && c)
			return (uint64_t)c * b / a;
	}
	return 0;
}

static uint64_t tsc_hz_hypervisor(void)
{
	uint32_t a, b, c, d;

	if (hypervisor_max_leaf() < CPUID_HV_TIMING)
		return 0;
	cpuid(CPUID_HV_TIMING, 0, &a, &b, &c, &d);
	return (uint64_t)a * 1000;
}

static uint64_t tsc_hz_base(void)
{
	uint32_t max, a, b, c, d;

	cpuid(0, 0, &max, &b, &c, &d);
	if (max < CPUID_FREQUENCY)
		return 0;
	cpuid(CPUID_FREQUENCY, 0, &a, &b, &c, &d);
	return (uint64_t)(a & 0xffff) * 1000000;
}

int clock_init(void)
{
	kind = CLOCK_NONE;
	source = NULL;
	if (try_kvmclock() ||
	    use_tsc(tsc_hz_cpuid(), "TSC (CPUID 0x15)") ||
	    use_tsc(tsc_hz_hypervisor(), "TSC (CPUID 0x40000010)") ||
	    use_tsc(tsc_hz_base(), "TSC (CPUID 0x16 base frequency)"))
		return 0;
	return -EOPNOTSUPP;
}

static uint64_t kvmclock_ns(void)
{
	uint32_t version, mul, tries = 0;
	uint64_t tsc, stamp, system;
	int8_t shift;

	do {
		version = READ_ONCE(pvclock.version);
		rmb();
		stamp = READ_ONCE(pvclock.tsc_timestamp);
		system = READ_ONCE(pvclock.system_time);
		mul = READ_ONCE(pvclock.tsc_to_system_mul);
		shift = READ_ONCE(pvclock.tsc_shift);
		tsc = rdtsc();
		rmb();
		if (++tries > PVCLOCK_MAX_RETRIES)
			return 0;
	} while ((version & 1) || version != READ_ONCE(pvclock.version));
	if (!version)
		return 0;	/* the host never filled it in */

	tsc -= stamp;
	if (shift < 0)
		tsc >>= -shift;
	else
		tsc <<= shift;
	return system + (uint64_t)(((unsigned __int128)tsc * mul) >> 32);
}

uint64_t clock_ns(void)
{
	switch (kind) {
	case CLOCK_KVM:
		return kvmclock_ns();
	case CLOCK_TSC:
		return (uint64_t)(((unsigned __int128)(rdtsc() - tsc0) * ns_mult) >> 32);
	default:
		return 0;
	}
}

int clock_calibrated(void)
{
	return kind != CLOCK_NONE;
}

const char *clock_source(void)
{
	return source ? source : "none";
}
