#!/bin/sh
# /usr/local/sbin/vesper-hand: the e2e tests' hand in the kit's Debian disk guest, run by
# vesper-hand.service on ttyS0 (stdin and stdout are the serial console; kernel
# messages share it). The same protocol as the initramfs guest's hand mode
# (guest/init.sh, hand()), with the same answers, so the tests' helpers parse both;
# here services are real systemd units and `sh` runs any shell command. This is the
# *tests'* hand, not the product's path: Vesper itself never depends on guest user space.
#
# One command per line, echo off, every answer a line starting "vesper-hand: ":
#   ping            -> pong
#   start NAME      -> started NAME pid=PID          (systemctl start vesper-svc@NAME:
#                      the kit's svc helper, comm NAME; an already running unit answers
#                      with its main PID)
#   kill SIG NAME   -> killed NAME pid=PID sig=SIG   (per live process with comm NAME)
#                    | kill failed NAME pid=PID sig=SIG | no process NAME
#   exit NAME CODE  -> exit requested NAME pid=PID code=CODE   (per svc with comm NAME)
#                    | no process NAME
#   panic           -> panicking                     (then sysrq-c: kernel panic)
#   oom             -> oom hog pid=PID               (hog eats memory until OOM-killed)
#   reboot          -> rebooting                     (then sysrq-b: immediate reboot;
#                      `sh systemctl reboot` is the orderly one)
#   status NAME     -> running NAME pid=PID          (per live process with comm NAME)
#                    | no process NAME
#   stack NAME      -> stack NAME pid=PID FRAME ...  (one line per /proc/PID/stack line)
#                      then stack end NAME pid=PID   | no process NAME
#   sh COMMAND...   -> out LINE ...                  (each line of its stdout+stderr:
#                      COMMAND is the rest of the line as typed, run by /bin/sh -c
#                      in /, stdin /dev/null) then sh end rc=N  (its exit status)
#   anything else   -> unknown command: LINE
#   malformed args  -> error: ...
# NAME: 1-15 of [A-Za-z0-9._-] (it becomes the kernel's comm, which holds 15 bytes). SIG:
# a number or a signal name, with or without SIG (9, KILL, SIGKILL, 0 to test for a
# live process). CODE: 0-255; `exit` writes it to /tmp/svc-exit/PID and sends SIGUSR1,
# and svc exits with it. The hand is OOM-immune (OOMScoreAdjust=-1000 in its unit);
# svcs and `sh` commands run at 0, the hog at 1000.

SVC=/usr/local/bin/svc
HOG=/usr/local/bin/hog
# the hand's scratch directory (a variable so the kit's unit tests can run the protocol)
HAND_RUN=${VESPER_HAND_RUN:-/run/vesper-hand}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb

hand_say() {
    echo "vesper-hand: $*"
}

# Is $1 usable as a svc name (and thus a comm, a file name and a unit instance)?
hand_valid_name() {
    case "$1" in
        '' | . | .. | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
    [ "${#1}" -le 15 ]
}

# Sets hand_pids to the PIDs (space-separated) of live (not zombie) processes whose comm
# is exactly $1, PID 1 and this hand excluded.
hand_find() {
    local d pid c st
    hand_pids=
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = 1 ] || [ "$pid" = "$$" ] && continue
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
    local name=$1 unit="vesper-svc@$1.service" pid out c i=0
    # Type=exec: systemctl returns once the svc has been executed (comm NAME).
    if ! out=$(systemctl start "$unit" 2>&1); then
        hand_say "error: start $name failed (systemctl start $unit: $(echo $out))"
        return
    fi
    pid=$(systemctl show -p MainPID --value "$unit")
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
        # dash's kill takes KILL, not SIGKILL
        if kill -"${sig#SIG}" "$pid" 2>/dev/null; then
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
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$SVC" ] || continue
        found=1
        echo "$code" >"/tmp/svc-exit/$pid"
        kill -USR1 "$pid"
        hand_say "exit requested $name pid=$pid code=$code"
    done
    [ -n "$found" ] || hand_say "no process $name"
}

hand_oom() {
    "$HOG" &
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

# Runs the shell command $1, answering each line of its output, then its status. The
# status travels through a file: the reading loop is the pipeline's last part.
hand_sh() {
    local rc l rcfile="$HAND_RUN/rc"
    rm -f "$rcfile"
    {
        (
            cd / || exit 125
            echo 0 >/proc/self/oom_score_adj 2>/dev/null
            exec /bin/sh -c "$1"
        ) </dev/null 2>&1
        echo "$?" >"$rcfile"
    } | while IFS= read -r l || [ -n "$l" ]; do
        hand_say "out $l"
    done
    rc=$(cat "$rcfile" 2>/dev/null)
    hand_say "sh end rc=${rc:-unknown}"
}

# Runs one command line: $1 the raw line, the rest its words.
hand_do() {
    local line=$1
    shift
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
            if [ $# -lt 2 ]; then
                hand_say "error: usage: sh COMMAND..."
            else
                # the raw rest of the line, quotes and all
                line=${line#"${line%%[! 	]*}"}
                hand_sh "${line#sh}"
            fi
            ;;
        *)
            hand_say "unknown command: $line"
            ;;
    esac
}

# pvpanic tells QEMU the guest panicked. udev loads it, but maybe not yet when the hand
# starts: load it now where its device is (ISA: ACPI QEMU0001; PCI: 1b36:0011), as the
# initramfs guest's init does before it is ready.
hand_drivers() {
    local d id drv
    [ -e /sys/bus/acpi/devices/QEMU0001:00 ] && modprobe -q pvpanic-mmio
    for d in /sys/bus/pci/devices/*; do
        id="$(cat "$d/vendor" 2>/dev/null):$(cat "$d/device" 2>/dev/null)"
        [ "$id" = 0x1b36:0x0011 ] && modprobe -q pvpanic-pci
    done
    for drv in pvpanic_mmio pvpanic_pci; do
        [ -d "/sys/module/$drv" ] && echo "vesper-init: loaded $drv"
    done
}

hand_banner() {
    echo "vesper-init: kernel $(cat /proc/sys/kernel/osrelease)"
    hand_drivers
    local out
    if [ -d /sys/module/vesper_front ]; then
        echo "vesper-init: frontend loaded ($(modinfo -n vesper_front 2>/dev/null))"
    elif out=$(modprobe vesper_front 2>&1); then
        echo "vesper-init: frontend loaded late ($(modinfo -n vesper_front 2>/dev/null)): systemd-modules-load had not"
    else
        echo "vesper-init: FRONTEND NOT LOADED: modprobe vesper_front failed: $out"
    fi
}

hand() {
    local cr line
    echo 1 >/proc/sys/kernel/sysrq
    stty -echo 2>/dev/null
    mkdir -p /tmp/svc-exit "$HAND_RUN"
    cr=$(printf '\r')
    hand_banner
    echo "vesper-init: hand ready"
    while :; do
        line=
        if ! IFS= read -r line; then
            # EOF/error on the console: don't spin
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
        hand_do "$line" "$@"
    done
}

[ -n "$VESPER_HAND_NO_MAIN" ] || hand
