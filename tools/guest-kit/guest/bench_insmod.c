/* SPDX-License-Identifier: Apache-2.0
 *
 * bench-insmod FILE.ko NAME N
 *
 * Guest-side baseline for Vesper's module-push benchmark: loads FILE.ko with the
 * init_module(2) syscall and unloads NAME with delete_module(2, O_NONBLOCK), N times,
 * the way insmod/rmmod do. The file is read into memory once before the loop; that read
 * is timed and reported on its own line so the per-iteration numbers cover the syscalls
 * only.
 *
 * Output (one line each):
 *   bench-insmod: read_us=<n> bytes=<n>
 *   bench-insmod: load_us=<n> unload_us=<n>      (N times)
 *   bench-insmod: done
 * Errors: "bench-insmod: error ..." with strerror, exit status 1 (2 for usage).
 *
 * Built by vesper-guest-kit with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static unsigned long long us_since(unsigned long long t0, unsigned long long t1)
{
	return (t1 - t0) / 1000ull;
}

static void *read_file(const char *path, size_t *len)
{
	struct stat st;
	size_t done = 0;
	char *buf;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		printf("bench-insmod: error open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0) {
		printf("bench-insmod: error fstat %s: %s\n", path, strerror(errno));
		close(fd);
		return NULL;
	}
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		printf("bench-insmod: error malloc %lld bytes: %s\n", (long long)st.st_size,
		       strerror(errno));
		close(fd);
		return NULL;
	}
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			printf("bench-insmod: error read %s: %s\n", path,
			       n < 0 ? strerror(errno) : "unexpected end of file");
			free(buf);
			close(fd);
			return NULL;
		}
		done += (size_t)n;
	}
	close(fd);
	*len = done;
	return buf;
}

int main(int argc, char **argv)
{
	unsigned long long t0, t1, t2;
	const char *file, *name;
	char *end;
	size_t len = 0;
	long n, i;
	void *image;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 4) {
		printf("bench-insmod: error usage: %s FILE.ko NAME N\n", argv[0]);
		return 2;
	}
	file = argv[1];
	name = argv[2];
	errno = 0;
	n = strtol(argv[3], &end, 10);
	if (errno || *end || n < 1) {
		printf("bench-insmod: error bad iteration count %s: %s\n", argv[3],
		       errno ? strerror(errno) : "must be a positive integer");
		return 2;
	}

	t0 = now_ns();
	image = read_file(file, &len);
	t1 = now_ns();
	if (!image)
		return 1;
	printf("bench-insmod: read_us=%llu bytes=%zu\n", us_since(t0, t1), len);

	for (i = 0; i < n; i++) {
		t0 = now_ns();
		if (syscall(SYS_init_module, image, (unsigned long)len, "") != 0) {
			printf("bench-insmod: error init_module %s (iteration %ld): %s\n", file, i,
			       strerror(errno));
			return 1;
		}
		t1 = now_ns();
		if (syscall(SYS_delete_module, name, O_NONBLOCK) != 0) {
			printf("bench-insmod: error delete_module %s (iteration %ld): %s\n", name, i,
			       strerror(errno));
			return 1;
		}
		t2 = now_ns();
		printf("bench-insmod: load_us=%llu unload_us=%llu\n", us_since(t0, t1),
		       us_since(t1, t2));
	}
	printf("bench-insmod: done\n");
	free(image);
	return 0;
}
