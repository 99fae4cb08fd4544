// SPDX-License-Identifier: Apache-2.0
/*
 * hand.c - console commands, mirroring init.sh's hand mode so the same tests drive both
 * guests. There are no processes here: `start` enters a pseudo service in a table with
 * a made-up PID, and what would happen to a real one is written to the relay channel
 * as the probes would report it:
 *
 *   ping            -> pong
 *   start NAME      -> started NAME pid=PID
 *   kill SIG NAME   -> killed NAME pid=PID sig=SIG per live service NAME (after its
 *                      RECORD_EXIT when SIG ends it, as vesper_exit_probe reports a
 *                      watched task: exit_code = signal = SIG), kill failed ... for an
 *                      unknown signal name, or no process NAME
 *   exit NAME CODE  -> exit requested NAME pid=PID code=CODE (after its RECORD_EXIT with
 *                      exit_code = CODE << 8, status = CODE), or no process NAME
 *   panic           -> panicking, then a RECORD_PANIC, the pvpanic port, halt
 *   oom             -> oom hog pid=PID, then a RECORD_OOM for the pseudo victim
 *   reboot          -> rebooting, then a reset through port 0xCF9
 *   spin MS         -> spinning MS ms: the poll loop stays awake that long instead of
 *                      halting (1-60000; a same-run baseline for the idle test), or
 *                      error: no clock
 *   anything else   -> unknown command: LINE; bad arguments -> error: ...
 *
 * Signals act as on the svc helper: default actions, except SIGUSR1, which makes it
 * exit with status 0 (no status file here); ignored (CHLD, CONT, URG, WINCH) and
 * stopping (STOP, TSTP, TTIN, TTOU) signals, and 0, leave it running.
 */
#include <stdarg.h>
#include <stdint.h>

#include "arch.h"
#include "console.h"
#include "hand.h"
#include "idle.h"
#include "lib.h"
#include "relay.h"
#include "vesper_abi.h"

#define HAND_MAX_ARGS		4
#define HAND_NAME_MAX		15	/* a comm holds 15 bytes */
#define HAND_MAX_SERVICES	64
#define HAND_FIRST_PID		100
/* The shell's init is PID 1; sysrq-c panics in its context. */
#define HAND_PANIC_PID		1
#define HAND_MAX_SIGNAL		64
#define HAND_MAX_EXIT_CODE	255
#define HAND_MAX_SPIN_MS	60000U

#define SIGUSR1			10
#define PVPANIC_PORT		0x505
#define PVPANIC_PANICKED	0x1
#define RESET_PORT		0xcf9
#define RESET_HARD		0x06	/* system reset + reset CPU */

/* The pseudo victim of `oom`, sized like init.sh's hog when the killer takes it. */
#define HOG_NAME		"hog"
#define HOG_OOM_SCORE_ADJ	1000
#define HOG_TOTAL_VM_KB		(448 * 1024)
#define HOG_ANON_RSS_KB		(440 * 1024)
#define HOG_FILE_RSS_KB		4

struct service {
	char name[HAND_NAME_MAX + 1];
	int32_t pid;
	int live;
};

static struct service services[HAND_MAX_SERVICES];
static int32_t next_pid;

/* What a signal does to a service that keeps the default actions. */
enum sig_effect { SIG_ENDS, SIG_EXIT_ZERO, SIG_LEAVES };

struct signal_name {
	const char *name;
	int number;
};

static const struct signal_name signal_names[] = {
	{ "HUP", 1 }, { "INT", 2 }, { "QUIT", 3 }, { "ILL", 4 }, { "TRAP", 5 },
	{ "ABRT", 6 }, { "IOT", 6 }, { "BUS", 7 }, { "FPE", 8 }, { "KILL", 9 },
	{ "USR1", 10 }, { "SEGV", 11 }, { "USR2", 12 }, { "PIPE", 13 }, { "ALRM", 14 },
	{ "TERM", 15 }, { "STKFLT", 16 }, { "CHLD", 17 }, { "CONT", 18 }, { "STOP", 19 },
	{ "TSTP", 20 }, { "TTIN", 21 }, { "TTOU", 22 }, { "URG", 23 }, { "XCPU", 24 },
	{ "XFSZ", 25 }, { "VTALRM", 26 }, { "PROF", 27 }, { "WINCH", 28 }, { "IO", 29 },
	{ "POLL", 29 }, { "PWR", 30 }, { "SYS", 31 },
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char msg[CONSOLE_LINE_MAX + 64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pr("vesper-hand: %s", msg);
}

static int valid_name(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > HAND_NAME_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return 0;
	for (; *s; s++) {
		char c = *s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* Letters and digits only, as init.sh accepts a SIG argument. */
static int plausible_signal(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9')))
			return 0;
	return 1;
}

/* A signal number, or -1 for a name kill(1) would not know. Case-insensitive names. */
static int signal_number(const char *s)
{
	char up[16];
	uint32_t v;
	size_t i;

	if (!parse_uint(s, 3, &v))
		return v <= HAND_MAX_SIGNAL ? (int)v : -1;
	for (i = 0; s[i] && i + 1 < sizeof(up); i++)
		up[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i] - 'a' + 'A') : s[i];
	if (s[i])
		return -1;
	up[i] = '\0';
	s = up;
	if (s[0] == 'S' && s[1] == 'I' && s[2] == 'G')
		s += 3;
	for (i = 0; i < ARRAY_SIZE(signal_names); i++)
		if (!strcmp(s, signal_names[i].name))
			return signal_names[i].number;
	return -1;
}

static enum sig_effect signal_effect(int sig)
{
	switch (sig) {
	case 0:		/* existence test */
	case 17:	/* CHLD */
	case 18:	/* CONT */
	case 19:	/* STOP */
	case 20:	/* TSTP */
	case 21:	/* TTIN */
	case 22:	/* TTOU */
	case 23:	/* URG */
	case 28:	/* WINCH */
		return SIG_LEAVES;
	case SIGUSR1:
		return SIG_EXIT_ZERO;
	default:
		return SIG_ENDS;
	}
}

/* The service's end, as vesper_exit_probe reports a watched task's do_exit(code). */
static void report_exit(const struct service *s, int32_t code)
{
	struct vesper_exit_record rec;
	int ret;

	memset(&rec, 0, sizeof(rec));
	rec.pid = s->pid;
	rec.tid = s->pid;
	rec.exit_code = code;
	rec.signal = code & 0x7f;
	rec.status = (code >> 8) & 0xff;
	strscpy((char *)rec.comm, s->name, sizeof(rec.comm));
	ret = relay_write(VESPER_RECORD_EXIT, VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	pr("vesper-mini: exit comm=%s pid=%d code=%#x signal=%d status=%d relay=%d", s->name,
	   rec.pid, rec.exit_code, rec.signal, rec.status, ret);
}

static void hand_start(const char *name)
{
	struct service *s = NULL;

	for (size_t i = 0; i < ARRAY_SIZE(services); i++) {
		if (!services[i].live) {
			s = &services[i];
			break;
		}
	}
	if (!s) {
		say("error: start %s failed (%u services already running)", name,
		    HAND_MAX_SERVICES);
		return;
	}
	if (!next_pid)
		next_pid = HAND_FIRST_PID;
	strscpy(s->name, name, sizeof(s->name));
	s->pid = next_pid++;
	s->live = 1;
	say("started %s pid=%d", name, s->pid);
}

static void hand_kill(const char *sig_text, const char *name)
{
	int sig = signal_number(sig_text), found = 0;

	for (size_t i = 0; i < ARRAY_SIZE(services); i++) {
		struct service *s = &services[i];

		if (!s->live || strcmp(s->name, name))
			continue;
		found = 1;
		if (sig < 0) {
			say("kill failed %s pid=%d sig=%s", name, s->pid, sig_text);
			continue;
		}
		switch (signal_effect(sig)) {
		case SIG_ENDS:
			report_exit(s, sig);
			s->live = 0;
			break;
		case SIG_EXIT_ZERO:
			report_exit(s, 0);
			s->live = 0;
			break;
		case SIG_LEAVES:
			break;
		}
		say("killed %s pid=%d sig=%s", name, s->pid, sig_text);
	}
	if (!found)
		say("no process %s", name);
}

/* code_text: CODE as typed (the reply echoes it, as init.sh does). */
static void hand_exit(const char *name, uint32_t code, const char *code_text)
{
	int found = 0;

	for (size_t i = 0; i < ARRAY_SIZE(services); i++) {
		struct service *s = &services[i];

		if (!s->live || strcmp(s->name, name))
			continue;
		found = 1;
		report_exit(s, (int32_t)(code << 8));
		s->live = 0;
		say("exit requested %s pid=%d code=%s", name, s->pid, code_text);
	}
	if (!found)
		say("no process %s", name);
}

static void hand_oom(void)
{
	struct vesper_oom_record rec;
	int ret;

	if (!next_pid)
		next_pid = HAND_FIRST_PID;
	memset(&rec, 0, sizeof(rec));
	rec.pid = next_pid++;
	say("oom " HOG_NAME " pid=%d", rec.pid);
	rec.oom_score_adj = HOG_OOM_SCORE_ADJ;
	rec.total_vm_kb = HOG_TOTAL_VM_KB;
	rec.anon_rss_kb = HOG_ANON_RSS_KB;
	rec.file_rss_kb = HOG_FILE_RSS_KB;
	strscpy((char *)rec.comm, HOG_NAME, sizeof(rec.comm));
	ret = relay_write(VESPER_RECORD_OOM, VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	pr("vesper-mini: OOM victim pid=%d comm=%s oom_score_adj=%d relay=%d", rec.pid,
	   rec.comm, rec.oom_score_adj, ret);
}

static __attribute__((noreturn)) void hand_panic(void)
{
	/* Static: the panic path should not need a big stack frame. */
	static struct vesper_panic_record rec;
	int ret;

	say("panicking");
	memset(&rec, 0, sizeof(rec));
	rec.cpu = 0;
	rec.pid = HAND_PANIC_PID;
	strscpy((char *)rec.message, "mini frontend: panic requested", sizeof(rec.message));
	ret = relay_write(VESPER_RECORD_PANIC, VESPER_RECORD_FLAG_URGENT, &rec, sizeof(rec));
	pr("vesper-mini: panic: %s (relay record %s, %d)", (const char *)rec.message,
	   ret ? "not sent" : "sent", ret);
	/* What Linux's pvpanic driver does from its panic notifier. */
	outb(PVPANIC_PORT, PVPANIC_PANICKED);
	pr("vesper-mini: halted");
	halt_forever();
}

static __attribute__((noreturn)) void hand_reboot(void)
{
	say("rebooting");
	outb(RESET_PORT, RESET_HARD);
	/* The VMM stops this vCPU; until it does, do nothing. */
	halt_forever();
}

/* Collapses runs of blanks into one space and trims the ends, as the shell's "$*" does. */
static void squeeze(char *s)
{
	char *out = s;
	int blank = 0;

	for (; *s == ' ' || *s == '\t'; s++)
		;
	for (; *s; s++) {
		if (*s == ' ' || *s == '\t') {
			blank = 1;
			continue;
		}
		if (blank)
			*out++ = ' ';
		blank = 0;
		*out++ = *s;
	}
	*out = '\0';
}

/* Splits line into at most max words at spaces and tabs; returns the count or -1. */
static int split(char *line, char *argv[], int max)
{
	int argc = 0;

	for (;;) {
		while (*line == ' ' || *line == '\t')
			line++;
		if (!*line)
			return argc;
		if (argc == max)
			return -1;
		argv[argc++] = line;
		while (*line && *line != ' ' && *line != '\t')
			line++;
		if (*line)
			*line++ = '\0';
	}
}

void hand_run(char *line)
{
	char copy[CONSOLE_LINE_MAX];
	char *argv[HAND_MAX_ARGS];
	uint32_t code;
	int argc;

	strscpy(copy, line, sizeof(copy));
	squeeze(copy);
	argc = split(line, argv, HAND_MAX_ARGS);
	if (!argc)
		return;
	if (argc < 0)
		argc = HAND_MAX_ARGS + 1;	/* too many words for any command */

	if (!strcmp(argv[0], "ping")) {
		if (argc == 1)
			say("pong");
		else
			say("error: usage: ping");
	} else if (!strcmp(argv[0], "start")) {
		if (argc != 2)
			say("error: usage: start NAME");
		else if (!valid_name(argv[1]))
			say("error: bad name %s (1-15 of A-Z a-z 0-9 . _ -)", argv[1]);
		else
			hand_start(argv[1]);
	} else if (!strcmp(argv[0], "kill")) {
		if (argc != 3)
			say("error: usage: kill SIG NAME");
		else if (!plausible_signal(argv[1]))
			say("error: bad signal %s", argv[1]);
		else
			hand_kill(argv[1], argv[2]);
	} else if (!strcmp(argv[0], "exit")) {
		if (argc != 3)
			say("error: usage: exit NAME CODE");
		else if (parse_uint(argv[2], 3, &code) || code > HAND_MAX_EXIT_CODE)
			say("error: bad exit code %s (0-255)", argv[2]);
		else
			hand_exit(argv[1], code, argv[2]);
	} else if (!strcmp(argv[0], "panic")) {
		if (argc == 1)
			hand_panic();
		say("error: usage: panic");
	} else if (!strcmp(argv[0], "oom")) {
		if (argc == 1)
			hand_oom();
		else
			say("error: usage: oom");
	} else if (!strcmp(argv[0], "spin")) {
		if (argc != 2 || parse_uint(argv[1], 5, &code) || !code || code > HAND_MAX_SPIN_MS)
			say("error: usage: spin MS (1-%u)", HAND_MAX_SPIN_MS);
		else if (idle_hold_awake(code))
			say("error: no calibrated clock to spin by");
		else
			say("spinning %u ms", code);
	} else if (!strcmp(argv[0], "reboot")) {
		if (argc == 1)
			hand_reboot();
		say("error: usage: reboot");
	} else {
		say("unknown command: %s", copy);
	}
}
