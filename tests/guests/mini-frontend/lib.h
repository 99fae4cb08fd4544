/* SPDX-License-Identifier: Apache-2.0 */
/*
 * lib.h - the few C library pieces the mini frontend needs (it links no libc):
 * memory and string helpers, and a small vsnprintf.
 */
#ifndef MINI_LIB_H
#define MINI_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a)		(sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)		((a) < (b) ? (a) : (b))
#define DIV_ROUND_UP(n, d)	(((n) + (d) - 1) / (d))

/* The Linux errno values the protocol carries (negated on the wire). */
#define ENOENT		2
#define ENOMEM		12
#define EBUSY		16
#define ENODEV		19
#define EINVAL		22
#define ENOSPC		28
#define E2BIG		7
#define EPROTO		71
#define EOPNOTSUPP	95
#define ETIMEDOUT	110

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);

/* Copies src into dst[size], always NUL-terminated; returns the length copied. */
size_t strscpy(char *dst, const char *src, size_t size);

/*
 * Parses a decimal number of at most max_digits digits (no sign); returns 0 and the
 * value, or -EINVAL for anything else.
 */
int parse_uint(const char *s, unsigned int max_digits, uint32_t *out);

/*
 * %s %c %d %u %x %p with l/ll/z, a width and the '0', '-' and '#' flags; returns the
 * length the whole output needs (as C's vsnprintf).
 */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

#endif /* MINI_LIB_H */
