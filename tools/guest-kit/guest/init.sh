#!/bin/busybox sh
# /init of the Vesper test guest (built into the initramfs by vesper-guest-kit).
# This is the *tests'* hand in the guest, not the product's path: Vesper itself never
# depends on guest user space.
#
# Kernel command line:
#   vesper.mode=freeze   (default) load the frontend, then PID 1 sleeps forever
#   vesper.mode=bench    load the frontend, run bench-insmod on vesper_bench_100k, freeze
#   vesper.bench_n=N     iterations for bench mode (default 20)
export PATH=/bin

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null || true

echo "vesper-init: kernel $(cat /proc/sys/kernel/osrelease)"

mode=freeze
bench_n=20
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vesper.mode=*) mode="${arg#vesper.mode=}" ;;
        vesper.bench_n=*) bench_n="${arg#vesper.bench_n=}" ;;
    esac
done

FRONT=/lib/vesper/vesper_front.ko
if [ ! -e "$FRONT" ]; then
    echo "vesper-init: FRONTEND NOT LOADED: $FRONT is missing from the initramfs"
elif out=$(insmod "$FRONT" 2>&1); then
    echo "vesper-init: frontend loaded ($FRONT)"
else
    rc=$?
    echo "vesper-init: FRONTEND NOT LOADED: insmod $FRONT failed (exit $rc): $out"
fi

freeze() {
    echo "vesper-init: user space frozen"
    exec /bin/busybox sleep 2147483647
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
    # ---- more modes go here (e.g. `svc`: start a watched service for the exit probe) ----
    *)
        echo "vesper-init: unknown vesper.mode=$mode, freezing"
        freeze
        ;;
esac
