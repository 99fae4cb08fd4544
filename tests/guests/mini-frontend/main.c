// SPDX-License-Identifier: Apache-2.0
/*
 * main.c - the mini frontend: a freestanding 64-bit guest that speaks the real Vesper
 * protocol (shared-abi/PROTOCOL.md) without Linux, for the built-in VMM's end-to-end
 * tests on hosts where no stock kernel boots. See README.md.
 *
 * Entered by start.S in long mode with the identity map of [0, 4 GiB), interrupts off
 * and no IDT (idle.c installs one). One loop polls the shared rings all the time and
 * the console every CONSOLE_POLL_EVERY turns (each UART read is a VM exit); after
 * IDLE_AFTER_NS with nothing from the host or the console it polls both once per
 * IDLE_SLICE_US, halted in between, and once per IDLE_LONG_SLICE_US after
 * IDLE_SHORT_SLEEPS of those, until something arrives.
 *
 * The quiet spell is measured in time, not loop turns: a turn costs ~50 ns under
 * hardware KVM but ~55 us under kvm_pvm, which emulates every instruction of this guest
 * (1.5 M kvm_emulate_insn events in 3 s, ~76 per turn), so a turn count tuned for one
 * kept the other spinning a host CPU for seconds after each command.
 */
#include <stdint.h>

#include "arch.h"
#include "clock.h"
#include "console.h"
#include "front.h"
#include "hand.h"
#include "idle.h"
#include "lib.h"
#include "pci.h"

/* Linux struct boot_params (the "zero page"): the offsets this program reads. */
#define BP_E820_ENTRIES		0x1e8	/* u8 */
#define BP_CMD_LINE_PTR		0x228	/* u32, setup header */
#define BP_E820_TABLE		0x2d0	/* struct boot_e820_entry[] */
#define BP_E820_MAX		128
#define BP_SIZE			0x1000
#define E820_ENTRY_SIZE		20
#define E820_RAM		1
#define CMDLINE_MAX		256
/* Loop turns between console polls. */
#define CONSOLE_POLL_EVERY	64
/* Quiet time before the loop starts sleeping. */
#define IDLE_AFTER_NS		1000000ULL
/* The same without a calibrated clock, in turns (~1 ms under hardware KVM). */
#define IDLE_AFTER_TURNS	20000
/* How long an idle loop sleeps between polls: the added latency of a command. */
#define IDLE_SLICE_US		1000
/* After this many short sleeps (about 0.1 s of quiet), the longer sleep. */
#define IDLE_SHORT_SLEEPS	100
#define IDLE_LONG_SLICE_US	100000

void mini_main(const uint8_t *boot_params) __attribute__((noreturn));

/* Whether the loop has been quiet long enough to sleep (never while a hold is on). */
static int quiet_enough(uint64_t quiet_since, unsigned int quiet_turns)
{
	if (idle_held())
		return 0;
	if (clock_calibrated())
		return clock_ns() - quiet_since >= IDLE_AFTER_NS;
	return quiet_turns >= IDLE_AFTER_TURNS;
}

static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* Logs the command line and the RAM the e820 map describes; both only for the log. */
static void log_boot_params(const uint8_t *bp)
{
	char cmdline[CMDLINE_MAX] = "";
	uint64_t ram = 0;
	uint32_t ptr;
	unsigned int n;

	/* Only inside the identity map, and clear of this low page's wraparound. */
	if (!bp || (uintptr_t)bp > (1ULL << 32) - BP_SIZE) {
		pr("vesper-mini: no boot parameters");
		return;
	}
	ptr = get_u32(bp + BP_CMD_LINE_PTR);
	if (ptr)
		strscpy(cmdline, (const char *)(uintptr_t)ptr, sizeof(cmdline));
	n = MIN((unsigned int)bp[BP_E820_ENTRIES], BP_E820_MAX);
	for (unsigned int i = 0; i < n; i++) {
		const uint8_t *e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;

		if (get_u32(e + 16) == E820_RAM)
			ram += get_u64(e + 8);
	}
	pr("vesper-mini: command line \"%s\", %lu MiB of RAM in %u e820 entries", cmdline,
	   (unsigned long)(ram >> 20), n);
}

void mini_main(const uint8_t *boot_params)
{
	struct pci_vesper dev;
	char line[CONSOLE_LINE_MAX];
	unsigned int turn = 0, quiet = 0, sleeps = 0;
	uint64_t quiet_since;
	int idle = 0;

	console_init();
	pr("vesper-mini: mini frontend starting (freestanding, no kernel)");
	log_boot_params(boot_params);
	if (clock_init())
		pr("vesper-mini: no calibrated clock: timestamps are 0 and OP_CLOCK is refused");
	else
		pr("vesper-mini: clock: %s", clock_source());
	if (idle_init())
		pr("vesper-mini: no x2APIC timer: the idle loop spins");
	else
		pr("vesper-mini: idle: halts between polls (x2APIC timer, %u then %u us)",
		   IDLE_SLICE_US, IDLE_LONG_SLICE_US);

	if (pci_find_vesper(&dev) || front_start(&dev))
		pr("vesper-mini: no Vesper frontend; the console still answers");
	pr("vesper-init: hand ready");

	quiet_since = clock_ns();
	for (;;) {
		int poll_console = idle || ++turn % CONSOLE_POLL_EVERY == 0;
		int busy = front_poll();

		if (poll_console) {
			switch (console_poll(line)) {
			case CONSOLE_LINE:
				hand_run(line);
				busy = 1;
				break;
			case CONSOLE_TOO_LONG:
				pr("vesper-hand: error: line longer than %u bytes",
				   CONSOLE_LINE_MAX - 1);
				busy = 1;
				break;
			case CONSOLE_NONE:
				break;
			}
		}
		if (busy || (idle && idle_held())) {
			idle = 0;
			quiet = 0;
			sleeps = 0;
			quiet_since = clock_ns();
		} else if (idle) {
			idle_sleep(sleeps < IDLE_SHORT_SLEEPS ? IDLE_SLICE_US : IDLE_LONG_SLICE_US);
			if (sleeps < IDLE_SHORT_SLEEPS)
				sleeps++;
		} else {
			quiet++;
			/* The clock is read with the console, not on every turn. */
			if (poll_console)
				idle = quiet_enough(quiet_since, quiet);
		}
		cpu_relax();
	}
}
