/* SPDX-License-Identifier: Apache-2.0 */
/*
 * idle.h - sleeping between polls, so an idle guest does not spin a host CPU: the
 * x2APIC timer wakes the halted CPU. Nothing else interrupts it (the Vesper device's
 * MSI-X stays off); each wake-up is just the next poll.
 */
#ifndef MINI_IDLE_H
#define MINI_IDLE_H

#include <stdint.h>

/*
 * Installs the IDT (exceptions report and halt, every other vector is acknowledged)
 * and programs the x2APIC timer. Returns 0, or -EOPNOTSUPP without an x2APIC or with
 * the APIC off (no in-kernel irqchip): then idle_sleep returns at once.
 */
int idle_init(void);

/* Halts about us microseconds (KVM's APIC timer counts nanoseconds). */
void idle_sleep(uint32_t us);

/*
 * Keeps the poll loop awake (spinning, never halting) for ms milliseconds: the tests'
 * `spin` hand, a baseline measured in the same run for what the idle loop saves.
 * Returns 0, or -EOPNOTSUPP without a calibrated clock.
 */
int idle_hold_awake(uint32_t ms);

/* Whether a hold is in force. */
int idle_held(void);

#endif /* MINI_IDLE_H */
