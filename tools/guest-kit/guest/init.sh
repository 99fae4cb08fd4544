#!/bin/busybox sh
# /init of the Vesper test guest (built into the initramfs by vesper-guest-kit).
# This is the *tests'* hand in the guest, not the product's path: Vesper itself never
# depends on guest user space.
#
# Kernel command line:
#   vesper.mode=freeze   (default) load the frontend, then PID 1 sleeps forever
#   vesper.mode=bench    load the frontend, run bench-insmod on vesper_bench_100k, freeze
#   vesper.mode=hand     load the frontend, then obey command lines read from the console
#                        (the tests' remote hand; protocol below, at hand())
#   vesper.bench_n=N     iterations for bench mode (default 20)
#   vesper.start=A,B     hand mode: start these svcs at boot, before `hand ready` (a
#                        guest whose service runs as soon as it is up, as a cluster's is)
#   vesper.front=skip    do not load the frontend (a guest without it installed or loaded)
#   vesper.front=bad     insmod a copy of the frontend whose module_layout symbol version
#                        is wrong, as a module built for another kernel has: the kernel
#                        refuses it ("disagrees about version of symbol module_layout")
export PATH=/bin

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null || true

echo "vesper-init: kernel $(cat /proc/sys/kernel/osrelease)"

mode=freeze
bench_n=20
start_at_boot=
front=load
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vesper.mode=*) mode="${arg#vesper.mode=}" ;;
        vesper.front=*) front="${arg#vesper.front=}" ;;
        vesper.start=*) start_at_boot="${arg#vesper.start=}" ;;
        vesper.bench_n=*) bench_n="${arg#vesper.bench_n=}" ;;
    esac
done

# Drivers a real guest image loads through udev: pvpanic tells QEMU the guest panicked.
for drv in pvpanic pvpanic-pci; do
    if out=$(insmod "/lib/drivers/$drv.ko" 2>&1); then
        echo "vesper-init: loaded $drv"
    else
        echo "vesper-init: could not load $drv: $out"
    fi
done

FRONT=/lib/vesper/vesper_front.ko

# vesper.front=bad: a copy of the frontend with the CRC its __versions table records for
# module_layout zeroed (the 8 bytes before the name), printed as its path.
front_for_another_kernel() {
    local bad=/tmp/vesper_front.ko at
    /bin/busybox cp "$FRONT" "$bad" || return 1
    # shellcheck disable=SC2046 # "OFFSET module_layout" split into $1 $2
    set -- $(/bin/busybox strings -t d "$bad" | /bin/busybox grep -m 1 ' module_layout$')
    at=$1
    [ -n "$at" ] || return 1
    /bin/busybox dd if=/dev/zero of="$bad" bs=1 seek=$((at - 8)) count=8 conv=notrunc \
        2>/dev/null || return 1
    echo "$bad"
}

load_front() {
    if out=$(insmod "$1" 2>&1); then
        echo "vesper-init: frontend loaded ($1)"
    else
        rc=$?
        echo "vesper-init: FRONTEND NOT LOADED: insmod $1 failed (exit $rc): $out"
    fi
}

if [ "$front" = skip ]; then
    echo "vesper-init: vesper.front=skip: the frontend is left out"
elif [ ! -e "$FRONT" ]; then
    echo "vesper-init: FRONTEND NOT LOADED: $FRONT is missing from the initramfs"
elif [ "$front" = bad ]; then
    if bad=$(front_for_another_kernel); then
        load_front "$bad"
    else
        echo "vesper-init: vesper.front=bad: no module_layout version in $FRONT to spoil"
    fi
else
    load_front "$FRONT"
fi

freeze() {
    echo "vesper-init: user space frozen"
    exec /bin/busybox sleep 2147483647
}

# ---- hand mode -------------------------------------------------------------------------
# Reads one command per line from the console (stdin = /dev/console = ttyS0, echo off) and
# answers every command with lines starting "vesper-hand: " (CRLF-terminated by the tty):
#   ping            -> pong
#   start NAME      -> started NAME pid=PID          (/bin/svc, comm NAME, in the background)
#   kill SIG NAME   -> killed NAME pid=PID sig=SIG   (per live process with comm NAME)
#                    | kill failed NAME pid=PID sig=SIG | no process NAME
#   exit NAME CODE  -> exit requested NAME pid=PID code=CODE   (per svc with comm NAME)
#                    | no process NAME
#   panic           -> panicking                     (then sysrq-c: kernel panic)
#   oom             -> oom hog pid=PID               (/bin/hog eats memory until OOM-killed)
#   reboot          -> rebooting                     (then sysrq-b: immediate reboot)
#   status NAME     -> running NAME pid=PID          (per live process with comm NAME)
#                    | no process NAME
#   stack NAME      -> stack NAME pid=PID FRAME ...  (one line per /proc/PID/stack line:
#                      the guest kernel's own unwinder, the host's `debug bt` oracle)
#                      then stack end NAME pid=PID   | no process NAME
#   sh COMMAND...   -> out LINE ... then sh end rc=N (COMMAND's output and exit status)
#   anything else   -> unknown command: LINE
#   malformed args  -> error: ...
# NAME: 1-15 of [A-Za-z0-9._-] (it becomes the kernel's comm, which holds 15 bytes). A svc
# gets its comm from the symlink /tmp/svc/NAME -> /bin/svc it is executed through; `start`
# answers only once /proc/PID/comm reads NAME. SIG: a number or a name busybox kill knows
# (9, KILL, TERM, ...). CODE: 0-255; `exit` writes it to /tmp/svc-exit/PID and sends
# SIGUSR1, and svc exits with it.
# init itself is OOM-immune (oom_score_adj -1000); svcs run at 0, the hog at 1000.

hand_say() {
    echo "vesper-hand: $*"
}

# Is $1 usable as a svc name (and thus a comm and a file name)?
hand_valid_name() {
    case "$1" in
        '' | . | .. | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
    [ "${#1}" -le 15 ]
}

# Sets hand_pids to the PIDs (space-separated) of live (not zombie) processes whose comm is
# exactly $1, init excluded. (A variable, not output: a $(...) subshell would be a process
# named "init" itself.)
hand_find() {
    local d pid c st
    hand_pids=
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = 1 ] && continue
        { read -r c <"$d/comm"; } 2>/dev/null || continue
        [ "$c" = "$1" ] || continue
        { read -r st <"$d/stat"; } 2>/dev/null || continue
        st=${st##*") "}
        case "$st" in
            Z* | X*) continue ;;
        esac
        hand_pids="$hand_pids $pid"
    done
}

hand_start() {
    local name=$1 pid c i=0
    ln -sf /bin/svc "/tmp/svc/$name"
    # The subshell is the svc-to-be: it resets the OOM immunity inherited from init, then
    # execs (same PID), so $! is the svc's PID.
    (
        echo 0 >/proc/self/oom_score_adj
        exec "/tmp/svc/$name"
    ) &
    pid=$!
    # Answer only once the exec happened, so a following `kill NAME` finds it.
    while [ "$i" -lt 500 ]; do
        { read -r c <"/proc/$pid/comm"; } 2>/dev/null || break
        if [ "$c" = "$name" ]; then
            hand_say "started $name pid=$pid"
            return
        fi
        i=$((i + 1))
        sleep 0.01
    done
    hand_say "error: start $name failed (pid=$pid never became $name)"
}

hand_kill() {
    local sig=$1 name=$2 pid found=
    hand_find "$name"
    for pid in $hand_pids; do
        found=1
        if kill -"$sig" "$pid" 2>/dev/null; then
            hand_say "killed $name pid=$pid sig=$sig"
        else
            hand_say "kill failed $name pid=$pid sig=$sig"
        fi
    done
    [ -n "$found" ] || hand_say "no process $name"
}

hand_exit() {
    local name=$1 code=$2 pid found=
    hand_find "$name"
    for pid in $hand_pids; do
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /bin/svc ] || continue
        found=1
        echo "$code" >"/tmp/svc-exit/$pid"
        kill -USR1 "$pid"
        hand_say "exit requested $name pid=$pid code=$code"
    done
    [ -n "$found" ] || hand_say "no process $name"
}

hand_oom() {
    /bin/hog &
    hand_say "oom hog pid=$!"
}

hand_panic() {
    hand_say "panicking"
    # let the reply leave the UART before the kernel stops
    sleep 0.2
    echo c >/proc/sysrq-trigger
}

hand_reboot() {
    hand_say "rebooting"
    sleep 0.2
    echo b >/proc/sysrq-trigger
}

hand_status() {
    local pid
    hand_find "$1"
    for pid in $hand_pids; do
        hand_say "running $1 pid=$pid"
    done
    [ -n "$hand_pids" ] || hand_say "no process $1"
}

# Runs one command line ($*, already split into words).
hand_do() {
    local line="$*"
    case "$1" in
        '') ;;
        ping)
            if [ $# -eq 1 ]; then hand_say "pong"; else hand_say "error: usage: ping"; fi
            ;;
        start)
            if [ $# -ne 2 ]; then
                hand_say "error: usage: start NAME"
            elif ! hand_valid_name "$2"; then
                hand_say "error: bad name $2 (1-15 of A-Z a-z 0-9 . _ -)"
            else
                hand_start "$2"
            fi
            ;;
        kill)
            if [ $# -ne 3 ]; then
                hand_say "error: usage: kill SIG NAME"
            else
                case "$2" in
                    *[!A-Za-z0-9]* | '') hand_say "error: bad signal $2" ;;
                    *) hand_kill "$2" "$3" ;;
                esac
            fi
            ;;
        exit)
            if [ $# -ne 3 ]; then
                hand_say "error: usage: exit NAME CODE"
            else
                case "$3" in
                    *[!0-9]* | '') hand_say "error: bad exit code $3 (0-255)" ;;
                    *)
                        if [ "${#3}" -le 3 ] && [ "$3" -le 255 ]; then
                            hand_exit "$2" "$3"
                        else
                            hand_say "error: bad exit code $3 (0-255)"
                        fi
                        ;;
                esac
            fi
            ;;
        panic)
            if [ $# -eq 1 ]; then hand_panic; else hand_say "error: usage: panic"; fi
            ;;
        oom)
            if [ $# -eq 1 ]; then hand_oom; else hand_say "error: usage: oom"; fi
            ;;
        reboot)
            if [ $# -eq 1 ]; then hand_reboot; else hand_say "error: usage: reboot"; fi
            ;;
        status)
            if [ $# -ne 2 ] || ! hand_valid_name "$2"; then
                hand_say "error: usage: status NAME"
            else
                hand_status "$2"
            fi
            ;;
        stack)
            if [ $# -ne 2 ] || ! hand_valid_name "$2"; then
                hand_say "error: usage: stack NAME"
            else
                hand_stack "$2"
            fi
            ;;
        sh)
            if [ $# -lt 2 ]; then hand_say "error: usage: sh COMMAND..."; else shift; hand_sh "$@"; fi
            ;;
        *)
            hand_say "unknown command: $line"
            ;;
    esac
}

# Runs the words as one shell command line (re-parsed by sh -c, so quotes work) and
# answers each line of its output, then its exit status.
hand_sh() {
    local out rc l
    out=$(/bin/busybox sh -c "$*" 2>&1)
    rc=$?
    printf '%s\n' "$out" | while IFS= read -r l; do
        hand_say "out $l"
    done
    hand_say "sh end rc=$rc"
}

# The kernel's own trace of each live process named $1.
hand_stack() {
    local pid l
    hand_find "$1"
    [ -n "$hand_pids" ] || {
        hand_say "no process $1"
        return
    }
    for pid in $hand_pids; do
        while IFS= read -r l; do
            hand_say "stack $1 pid=$pid $l"
        done <"/proc/$pid/stack"
        hand_say "stack end $1 pid=$pid"
    done
}

hand() {
    echo -1000 >/proc/1/oom_score_adj
    echo 1 >/proc/sys/kernel/sysrq
    stty -echo 2>/dev/null
    mkdir -p /tmp/svc /tmp/svc-exit
    cr=$(printf '\r')
    local name
    for name in $(echo "$start_at_boot" | tr , ' '); do
        if hand_valid_name "$name"; then
            hand_start "$name"
        else
            hand_say "error: vesper.start: bad name $name"
        fi
    done
    echo "vesper-init: hand ready"
    while :; do
        line=
        if ! IFS= read -r line; then
            # EOF/error on the console: don't spin, don't let init die
            [ -n "$line" ] || {
                sleep 1
                continue
            }
        fi
        line=${line%"$cr"}
        # split into words, never glob them (globbing stays on for /proc walks)
        set -f
        # shellcheck disable=SC2086 # word splitting is the point
        set -- $line
        set +f
        hand_do "$@"
    done
}

echo "vesper-init: mode $mode"
case "$mode" in
    freeze)
        freeze
        ;;
    bench)
        /bin/bench-insmod /lib/vesper/vesper_bench_100k.ko vesper_bench_100k "$bench_n" \
            || echo "vesper-init: bench-insmod failed (exit $?)"
        echo "vesper-init: bench done"
        freeze
        ;;
    hand)
        hand
        ;;
    *)
        echo "vesper-init: unknown vesper.mode=$mode, freezing"
        freeze
        ;;
esac
