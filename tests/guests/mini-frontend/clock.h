/* SPDX-License-Identifier: Apache-2.0 */
/*
 * clock.h - a nanosecond clock since boot, when the platform says how fast the TSC runs.
 */
#ifndef MINI_CLOCK_H
#define MINI_CLOCK_H

#include <stdint.h>

/* Finds a calibrated source; returns 0, or -EOPNOTSUPP when there is none. */
int clock_init(void);

/* Nanoseconds since clock_init (kvmclock: since the VM started), or 0 without a source. */
uint64_t clock_ns(void);

/* Whether clock_ns counts real nanoseconds. */
int clock_calibrated(void);

/* What the clock is based on, for the log. */
const char *clock_source(void);

#endif /* MINI_CLOCK_H */
