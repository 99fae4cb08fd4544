/* SPDX-License-Identifier: Apache-2.0
 *
 * svc — the stand-in service that the test init's hand mode starts (see init.sh).
 *
 * It does nothing but wait for signals, so the kernel sees a long-running user process
 * whose name (comm) the test chose: the hand starts it through a symlink
 * /tmp/svc/NAME -> /bin/svc, and the kernel takes comm from the basename of the path
 * passed to execve(2).
 *
 * Signals keep their default actions (SIGTERM, SIGKILL, SIGSEGV ... end it the usual
 * way), except SIGUSR1: "exit now with the status the hand wrote to
 * /tmp/svc-exit/<pid>" (a decimal 0..255; 0 when the file is missing or malformed). The
 * file is removed before exiting.
 *
 * Silent: it writes nothing, so the console carries only the hand's replies.
 *
 * Built by vesper-guest-kit with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t exit_requested;

static void on_usr1(int sig)
{
	(void)sig;
	exit_requested = 1;
}

/* The requested exit status: the decimal in /tmp/svc-exit/<pid>, else 0. */
static int requested_status(void)
{
	char path[64], buf[16];
	int fd, status = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/tmp/svc-exit/%ld", (long)getpid());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	unlink(path);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (char *p = buf; *p >= '0' && *p <= '9'; p++) {
		status = status * 10 + (*p - '0');
		if (status > 255)
			return 0;
	}
	return status;
}

int main(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigset_t block, wait_mask;

	sigemptyset(&sa.sa_mask);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	/* Block SIGUSR1 outside sigsuspend so a request can't slip between check and wait. */
	sigprocmask(SIG_BLOCK, &block, &wait_mask);
	sigdelset(&wait_mask, SIGUSR1);
	sigaction(SIGUSR1, &sa, NULL);
	while (!exit_requested)
		sigsuspend(&wait_mask);
	return requested_status();
}
