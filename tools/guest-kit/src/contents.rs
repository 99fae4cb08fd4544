//! What the kit is made of: the host packages it installs, the module directories it
//! builds, the guest's busybox applets, its `/init` and the static helpers.

/// Host packages the kit needs besides the kernel headers.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gcc",
    "make",
    "libc6-dev",
    // ocf-tester for the OCF agent's e2e test (tools/ocf), and xmllint, which it lints
    // the agent's meta-data with (only a Recommends of resource-agents).
    "resource-agents",
    "libxml2-utils",
    // fencing.py, which fence_vesper (tools/fence) is built on, as every fence agent is.
    "fence-agents",
    // gdb for `vesper debug gdb` and its e2e test (real gdb against QEMU's gdbstub).
    "gdb",
    // The kernel debuggers that open Vesper's vmcores, with the kit's debug vmlinux.
    "crash",
    "python3-drgn",
    // The host probes' eBPF C (host/hostprobe/build.rs): clang -target bpf, libbpf's
    // bpf_helpers.h, the kernel's UAPI headers; bpftool to inspect the loaded programs.
    "clang",
    "libbpf-dev",
    "linux-libc-dev",
    "bpftool",
    // The Debian disk guest (src/disk/): mmdebstrap installs Debian into it, sfdisk
    // partitions it, qemu-img makes the qcow2.
    "mmdebstrap",
    "fdisk",
    "qemu-utils",
];

/// Directories (relative to the repository root) whose Makefiles build guest modules.
pub const MODULE_DIRS: &[&str] = &["guest-module", "probes", "tests/modules"];

/// Module directories (of [`MODULE_DIRS`]) whose modules guests load stripped of their
/// DWARF (`objcopy --strip-debug`, as Debian strips its modules): the test fixtures,
/// whose sizes are their blobs' (`vesper_bench_100k` ~100 KiB, `vesper_big` ~6 MiB).
/// Their debug files keep it, like every other module's (`Kit::debug_modules_dir`).
pub const STRIPPED_MODULE_DIRS: &[&str] = &["tests/modules"];

/// Sources of the mini frontend (relative to the repository root).
pub const MINI_FRONTEND_DIR: &str = "tests/guests/mini-frontend";
/// The generated wire header the mini frontend is built against (relative to the root).
pub const ABI_HEADER: &str = "guest-module/include/vesper_abi.h";
/// File name of the mini frontend's ELF in its output directory.
pub const MINI_FRONTEND_ELF: &str = "mini-frontend.elf";

/// Busybox applets linked in the initramfs's `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "rmmod", "lsmod", "sleep", "cat", "echo", "mkdir", "poweroff", "kill",
    "dmesg", "ln", "readlink", "stty",
];

/// Source of the guest's `/init`.
pub const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
/// Source of the `bench-insmod` helper.
pub const BENCH_INSMOD_C: &str = include_str!("../guest/bench_insmod.c");
/// Source of the `svc` helper (the service that hand mode starts under a chosen name).
pub const SVC_C: &str = include_str!("../guest/svc.c");
/// Source of the `hog` helper (hand mode's `oom`: eats memory until OOM-killed).
pub const HOG_C: &str = include_str!("../guest/hog.c");

/// A static C helper compiled with `gcc -static -O2` and installed as `/bin/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    /// Binary name (in `<kit>/guest-bin/` and the initramfs's `/bin`).
    pub name: &'static str,
    /// Name of the C file written next to it.
    pub source_name: &'static str,
    /// The C source.
    pub source: &'static str,
}

/// The static helpers, in build order.
pub const HELPERS: &[Helper] = &[
    Helper {
        name: "bench-insmod",
        source_name: "bench_insmod.c",
        source: BENCH_INSMOD_C,
    },
    Helper {
        name: "svc",
        source_name: "svc.c",
        source: SVC_C,
    },
    Helper {
        name: "hog",
        source_name: "hog.c",
        source: HOG_C,
    },
];
