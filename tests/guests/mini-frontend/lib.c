// SPDX-License-Identifier: Apache-2.0
/*
 * lib.c - memory/string helpers and vsnprintf for a program without libc. gcc may emit
 * calls to memcpy/memset/memmove/memcmp itself, so these keep their standard names.
 */
#include "lib.h"

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	if (d < s) {
		while (n--)
			*d++ = *s++;
	} else {
		while (n--)
			d[n] = s[n];
	}
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

size_t strscpy(char *dst, const char *src, size_t size)
{
	size_t n;

	if (!size)
		return 0;
	n = strnlen(src, size - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
	return n;
}

int parse_uint(const char *s, unsigned int max_digits, uint32_t *out)
{
	uint32_t v = 0;
	unsigned int n = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++, n++) {
		if (*s < '0' || *s > '9' || n == max_digits)
			return -EINVAL;
		v = v * 10 + (uint32_t)(*s - '0');
	}
	*out = v;
	return 0;
}

/* Output cursor of vsnprintf: counts every byte, stores those that fit. */
struct out {
	char *buf;
	size_t size;
	size_t len;
};

static void out_char(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		out_char(o, c);
}

static void out_str(struct out *o, const char *s, int width, int left)
{
	int len;

	if (!s)
		s = "(null)";
	len = (int)strlen(s);
	if (!left)
		out_pad(o, ' ', width - len);
	while (*s)
		out_char(o, *s++);
	if (left)
		out_pad(o, ' ', width - len);
}

static void out_num(struct out *o, uint64_t v, int negative, unsigned int base,
		    int width, char pad, int left)
{
	char digits[24];
	int n = 0, len;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	len = n + (negative ? 1 : 0);
	if (negative && pad == '0')
		out_char(o, '-');
	if (!left)
		out_pad(o, pad, width - len);
	if (negative && pad != '0')
		out_char(o, '-');
	while (n)
		out_char(o, digits[--n]);
	if (left)
		out_pad(o, ' ', width - len);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		int width = 0, left = 0, lng = 0, alt = 0;
		char pad = ' ';
		uint64_t u;
		int64_t s;

		if (*fmt != '%') {
			out_char(&o, *fmt);
			continue;
		}
		fmt++;
		for (; *fmt == '-' || *fmt == '0' || *fmt == '#'; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '#')
				alt = 1;
			else
				pad = '0';
		}
		if (left)
			pad = ' ';
		for (; *fmt >= '0' && *fmt <= '9'; fmt++)
			width = width * 10 + (*fmt - '0');
		for (; *fmt == 'l' || *fmt == 'z'; fmt++)
			lng++;

		switch (*fmt) {
		case 'c':
			out_char(&o, (char)va_arg(ap, int));
			break;
		case 's':
			out_str(&o, va_arg(ap, const char *), width, left);
			break;
		case 'd':
		case 'i':
			s = lng ? va_arg(ap, long) : va_arg(ap, int);
			u = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
			out_num(&o, u, s < 0, 10, width, pad, left);
			break;
		case 'u':
			u = lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			out_num(&o, u, 0, 10, width, pad, left);
			break;
		case 'x':
			u = lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			if (alt)
				out_str(&o, "0x", 0, 0);
			out_num(&o, u, 0, 16, width, pad, left);
			break;
		case 'p':
			out_str(&o, "0x", 0, 0);
			out_num(&o, (uintptr_t)va_arg(ap, void *), 0, 16, 0, ' ', 0);
			break;
		case '%':
			out_char(&o, '%');
			break;
		case '\0':
			fmt--;	/* a lone '%' at the end */
			break;
		default:
			out_char(&o, '%');
			out_char(&o, *fmt);
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}
