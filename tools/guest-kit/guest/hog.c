/* SPDX-License-Identifier: Apache-2.0
 *
 * hog — the memory hog that the test init's `oom` command starts (see init.sh).
 *
 * It makes itself the OOM killer's preferred victim (oom_score_adj 1000), then
 * allocates memory in 16 MiB steps with malloc and touches every page with memset, so the
 * memory is really resident, until the kernel OOM-kills it. A failed malloc (overcommit
 * refusal) is retried after a short pause rather than ending the hog: the point is for
 * the kernel to run out of memory. Nothing is ever freed, and nothing is locked.
 *
 * Silent on success; complains (once, on stdout) only if oom_score_adj cannot be set.
 *
 * Built by vesper-guest-kit with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STEP (16u << 20)

int main(void)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "1000\n", 5) != 5)
		printf("hog: warning: could not set oom_score_adj to 1000\n");
	if (fd >= 0)
		close(fd);
	fflush(stdout);
	for (unsigned long i = 1;; i++) {
		char *p = malloc(STEP);

		if (!p) {
			usleep(10000);
			continue;
		}
		/* Non-zero fill: every page is written, so every page is really backed. */
		memset(p, (int)(i & 0xff) | 1, STEP);
		/* Keep the compiler from proving the block dead. */
		__asm__ volatile("" : : "r"(p) : "memory");
	}
}
