// SPDX-License-Identifier: Apache-2.0
/*
 * idle.c - an IDT and the x2APIC timer, for sleeping with `sti; hlt` instead of
 * spinning. The sti shadow covers the hlt, so a timer that fires between arming and
 * halting still wakes it.
 *
 * Every vector from 32 up goes to one stub (start.S) that writes the x2APIC EOI and
 * returns; LINT0/LINT1 are masked, so only the timer (and a spurious interrupt) should
 * ever arrive. Exceptions go to per-vector stubs that report the vector and halt: a
 * fault here is a bug, and saying which beats a triple fault.
 */
#include <stdint.h>

#include "arch.h"
#include "clock.h"
#include "console.h"
#include "idle.h"
#include "lib.h"

#define CPUID_FEATURES		0x1
#define CPUID_ECX_X2APIC	(1U << 21)
#define MSR_APIC_BASE		0x1b
#define APIC_BASE_X2APIC	(1ULL << 10)
#define APIC_BASE_ENABLE	(1ULL << 11)
#define MSR_X2APIC_SVR		0x80f
#define MSR_X2APIC_LVT_TIMER	0x832
#define MSR_X2APIC_LVT_LINT0	0x835
#define MSR_X2APIC_LVT_LINT1	0x836
#define MSR_X2APIC_TIMER_INIT	0x838
#define MSR_X2APIC_TIMER_DIV	0x83e
#define APIC_SVR_ENABLE		(1U << 8)
#define APIC_LVT_MASKED		(1U << 16)
#define APIC_TIMER_DIVIDE_1	0xb
#define VECTOR_TIMER		0x40
#define VECTOR_SPURIOUS		0xff
#define IDT_VECTORS		256
#define EXCEPTION_VECTORS	32
#define EXCEPTION_STUB_SIZE	16	/* start.S lays the stubs out 16 bytes apart */
#define GATE_INTERRUPT_64	0x8e	/* present, DPL 0, 64-bit interrupt gate */
/* KVM's emulated APIC timer runs at 1 GHz (APIC_BUS_CYCLE_NS = 1). */
#define APIC_TICKS_PER_US	1000

struct idt_gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t ist;
	uint8_t type;
	uint16_t offset_mid;
	uint32_t offset_high;
	uint32_t reserved;
} __attribute__((packed));

struct idt_pointer {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

_Static_assert(sizeof(struct idt_gate) == 16, "IDT gate layout");

/* start.S */
extern char exception_stubs[];
extern char irq_stub[];

void mini_exception(uint64_t vector, uint64_t rip) __attribute__((noreturn));

static struct idt_gate idt[IDT_VECTORS] __attribute__((aligned(16)));
static int armed;
/* clock_ns() until which the loop must not sleep; 0 for none. */
static uint64_t awake_until;

static void set_gate(unsigned int vector, const void *handler, uint16_t cs)
{
	uintptr_t a = (uintptr_t)handler;

	idt[vector] = (struct idt_gate){
		.offset_low = (uint16_t)a,
		.selector = cs,
		.type = GATE_INTERRUPT_64,
		.offset_mid = (uint16_t)(a >> 16),
		.offset_high = (uint32_t)(a >> 32),
	};
}

void mini_exception(uint64_t vector, uint64_t rip)
{
	pr("vesper-mini: CPU exception %lu at %#lx; halted", (unsigned long)vector,
	   (unsigned long)rip);
	halt_forever();
}

int idle_init(void)
{
	struct idt_pointer ptr = { sizeof(idt) - 1, (uintptr_t)idt };
	uint32_t a, b, c, d;
	uint64_t base;
	uint16_t cs;

	armed = 0;
	cpuid(CPUID_FEATURES, 0, &a, &b, &c, &d);
	if (!(c & CPUID_ECX_X2APIC))
		return -EOPNOTSUPP;
	/* Without an in-kernel irqchip the APIC reads as off: touching it would fault. */
	base = rdmsr(MSR_APIC_BASE);
	if (!(base & APIC_BASE_ENABLE))
		return -EOPNOTSUPP;

	__asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
	for (unsigned int v = 0; v < IDT_VECTORS; v++)
		set_gate(v, v < EXCEPTION_VECTORS ?
			 exception_stubs + v * EXCEPTION_STUB_SIZE : irq_stub, cs);
	__asm__ __volatile__("lidt %0" : : "m"(ptr) : "memory");

	wrmsr(MSR_APIC_BASE, base | APIC_BASE_X2APIC);
	wrmsr(MSR_X2APIC_SVR, APIC_SVR_ENABLE | VECTOR_SPURIOUS);
	wrmsr(MSR_X2APIC_LVT_LINT0, APIC_LVT_MASKED);
	wrmsr(MSR_X2APIC_LVT_LINT1, APIC_LVT_MASKED);
	wrmsr(MSR_X2APIC_TIMER_DIV, APIC_TIMER_DIVIDE_1);
	wrmsr(MSR_X2APIC_LVT_TIMER, VECTOR_TIMER);	/* one-shot */
	armed = 1;
	return 0;
}

void idle_sleep(uint32_t us)
{
	if (!armed)
		return;
	wrmsr(MSR_X2APIC_TIMER_INIT, (uint64_t)us * APIC_TICKS_PER_US);
	__asm__ __volatile__("sti; hlt; cli" ::: "memory");
}

int idle_hold_awake(uint32_t ms)
{
	if (!clock_calibrated())
		return -EOPNOTSUPP;
	awake_until = clock_ns() + (uint64_t)ms * 1000000;
	return 0;
}

int idle_held(void)
{
	return awake_until && clock_ns() < awake_until;
}
