/* SPDX-License-Identifier: GPL-2.0 */
/*
 * VESPER_BLOB(sym, pages): a read-only blob of pages x 4 KiB in .rodata, emitted by the
 * assembler (.rept/.fill), so the C compiler never sees a large initializer and the
 * build stays fast. Each page starts with its index and a marker word and is filled
 * with a non-zero pattern, so chunks at different offsets differ (a transfer that
 * misplaces a chunk fails the image CRC).
 */
#ifndef VESPER_TEST_BLOB_H
#define VESPER_TEST_BLOB_H

#include <linux/stringify.h>
#include <linux/types.h>

#define VESPER_BLOB(sym, pages)						\
	asm(".pushsection .rodata." #sym ", \"a\"\n"			\
	    ".balign 4096\n"						\
	    ".type " #sym ", @object\n"					\
	    #sym ":\n"							\
	    ".set vesper_blob_i, 0\n"					\
	    ".rept " __stringify(pages) "\n"				\
	    ".long vesper_blob_i, 0x56455350\n"				\
	    ".fill 4088, 1, 0xa5 ^ (vesper_blob_i & 0x3f)\n"		\
	    ".set vesper_blob_i, vesper_blob_i + 1\n"			\
	    ".endr\n"							\
	    ".size " #sym ", " __stringify(pages) " * 4096\n"		\
	    ".popsection\n");						\
	extern const u8 sym[(pages) * 4096]

#endif /* VESPER_TEST_BLOB_H */
