/* SPDX-License-Identifier: Apache-2.0 */
/*
 * console.h - COM1 (8250 at 0x3f8), polled both ways, and the log ring: every line the
 * mini frontend prints is also kept for OP_KMSG.
 */
#ifndef MINI_CONSOLE_H
#define MINI_CONSOLE_H

#include <stddef.h>

/* Longest console command line accepted (longer ones are refused whole). */
#define CONSOLE_LINE_MAX 256

void console_init(void);

/* Prints one line (a newline is added), to COM1 and to the log ring. */
void pr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

enum console_input {
	CONSOLE_NONE,		/* no complete line yet */
	CONSOLE_LINE,		/* a line (without its terminator) is in the buffer */
	CONSOLE_TOO_LONG,	/* a line longer than CONSOLE_LINE_MAX - 1 was dropped */
};

/* Takes whatever COM1 received; never waits. */
enum console_input console_poll(char line[CONSOLE_LINE_MAX]);

/*
 * Copies the newest whole lines of the log ring that fit into dst[cap]; returns the
 * bytes copied (no NUL).
 */
size_t log_tail(char *dst, size_t cap);

#endif /* MINI_CONSOLE_H */
