// SPDX-License-Identifier: Apache-2.0
/*
 * console.c - the 8250 UART at COM1, polled (no interrupts), and the log ring.
 *
 * Output lines end in CRLF, as a Linux tty writes them, so tests read both guests'
 * consoles alike. Input is a command line per CR, LF or CRLF.
 */
#include <stdarg.h>
#include <stdint.h>

#include "arch.h"
#include "console.h"
#include "lib.h"

#define COM1		0x3f8
#define UART_DATA	0	/* RBR/THR, DLL when DLAB */
#define UART_IER	1	/* DLM when DLAB */
#define UART_FCR	2
#define UART_LCR	3
#define UART_MCR	4
#define UART_LSR	5
#define LCR_8N1		0x03
#define LCR_DLAB	0x80
#define FCR_ENABLE_CLEAR 0x07	/* FIFO on, both FIFOs cleared */
#define MCR_DTR_RTS	0x03
#define LSR_DATA_READY	0x01
#define LSR_THR_EMPTY	0x20
#define BAUD_DIVISOR	1	/* 115200 */
/* Bound on waiting for THR empty: a UART that never drains costs output, not a hang. */
#define TX_SPIN_LIMIT	100000
/* Bytes taken from the UART per console_poll (each one is a VM exit). */
#define RX_BURST	64

/* Power of two, so the free-running offsets wrap cleanly. */
#define LOG_RING_SIZE	16384

static char log_ring[LOG_RING_SIZE];
static uint64_t log_head;		/* bytes ever logged */

static char rx_line[CONSOLE_LINE_MAX];
static size_t rx_len;
static int rx_overflow;
static int rx_last_cr;			/* swallow the LF of a CRLF */

void console_init(void)
{
	outb(COM1 + UART_IER, 0);
	outb(COM1 + UART_LCR, LCR_DLAB);
	outb(COM1 + UART_DATA, BAUD_DIVISOR & 0xff);
	outb(COM1 + UART_IER, BAUD_DIVISOR >> 8);
	outb(COM1 + UART_LCR, LCR_8N1);
	outb(COM1 + UART_FCR, FCR_ENABLE_CLEAR);
	outb(COM1 + UART_MCR, MCR_DTR_RTS);
}

static void uart_putc(char c)
{
	unsigned int spins = 0;

	while (!(inb(COM1 + UART_LSR) & LSR_THR_EMPTY) && spins++ < TX_SPIN_LIMIT)
		cpu_relax();
	outb(COM1 + UART_DATA, (uint8_t)c);
}

static void log_putc(char c)
{
	log_ring[log_head % LOG_RING_SIZE] = c;
	log_head++;
}

void pr(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	size_t i, n;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	n = strlen(line);
	for (i = 0; i < n; i++) {
		uart_putc(line[i]);
		log_putc(line[i]);
	}
	uart_putc('\r');
	uart_putc('\n');
	log_putc('\n');
}

size_t log_tail(char *dst, size_t cap)
{
	uint64_t start, first = log_head > LOG_RING_SIZE ? log_head - LOG_RING_SIZE : 0;
	size_t n;

	start = log_head - MIN((uint64_t)cap, log_head - first);
	/*
	 * A cut inside a line starts at the next whole one; at `first` of a wrapped ring
	 * the byte before is gone, so whether it ended a line is unknown.
	 */
	if (start > 0 &&
	    (start == first || log_ring[(start - 1) % LOG_RING_SIZE] != '\n')) {
		while (start < log_head && log_ring[start % LOG_RING_SIZE] != '\n')
			start++;
		if (start < log_head)
			start++;
	}
	n = (size_t)(log_head - start);
	for (size_t i = 0; i < n; i++)
		dst[i] = log_ring[(start + i) % LOG_RING_SIZE];
	return n;
}

enum console_input console_poll(char line[CONSOLE_LINE_MAX])
{
	unsigned int burst;

	for (burst = 0; burst < RX_BURST; burst++) {
		char c;

		if (!(inb(COM1 + UART_LSR) & LSR_DATA_READY))
			return CONSOLE_NONE;
		c = (char)inb(COM1 + UART_DATA);
		if (c == '\n' && rx_last_cr) {
			rx_last_cr = 0;
			continue;
		}
		rx_last_cr = c == '\r';
		if (c == '\r' || c == '\n') {
			enum console_input got = rx_overflow ? CONSOLE_TOO_LONG : CONSOLE_LINE;

			memcpy(line, rx_line, rx_len);
			line[rx_len] = '\0';
			rx_len = 0;
			rx_overflow = 0;
			return got;
		}
		if (rx_len + 1 < CONSOLE_LINE_MAX)
			rx_line[rx_len++] = c;
		else
			rx_overflow = 1;
	}
	return CONSOLE_NONE;
}
