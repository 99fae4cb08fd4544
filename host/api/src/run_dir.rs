//! vesperd's run directory — its API socket, and per VM `RUN/guests/NAME/` with every
//! file and socket in it — each named here once: vesperd, QEMU's command line, the debug
//! and console code, the adoption after a restart, the CLI's default socket and the
//! tests all find them through these functions.

use std::path::{Path, PathBuf};

/// `RUN/vesperd.sock`: the API socket, where vesperd puts it by default.
pub fn api_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("vesperd.sock")
}

/// `RUN/guests/` (read by the adoption after a restart).
pub fn guests_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("guests")
}

/// `RUN/guests/NAME/`.
pub fn of(run_dir: &Path, name: &str) -> PathBuf {
    guests_dir(run_dir).join(name)
}

/// The serial console's log (what the guest printed, vesperd writes it).
pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// QEMU's serial console socket, which vesperd keeps connected.
pub fn console_socket(dir: &Path) -> PathBuf {
    dir.join("console.sock")
}

/// QEMU's QMP socket for commands.
pub fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// QEMU's second QMP socket, for its events.
pub fn qmp_events_socket(dir: &Path) -> PathBuf {
    dir.join("qmp-events.sock")
}

/// The ivshmem server's socket, which QEMU's Vesper device connects to.
pub fn ivshmem_socket(dir: &Path) -> PathBuf {
    dir.join("ivshmem.sock")
}

/// QEMU's own gdbstub.
pub fn qemu_gdb_socket(dir: &Path) -> PathBuf {
    dir.join("qemu-gdb.sock")
}

/// The gdb endpoint `vesper debug gdb` hands out (a relay to QEMU's gdbstub, or the
/// builtin VMM's gdb server).
pub fn gdb_socket(dir: &Path) -> PathBuf {
    dir.join("gdb.sock")
}

/// QEMU's stderr.
pub fn qemu_log(dir: &Path) -> PathBuf {
    dir.join("qemu.log")
}

/// The record of a running VM that a restarted vesperd adopts it from.
pub fn vm_record(dir: &Path) -> PathBuf {
    dir.join("vm.json")
}

/// The VM's definition (TOML), written by its last start: what a plain `vm start NAME`,
/// an adoption and the failover engine build it from.
pub fn definition(dir: &Path) -> PathBuf {
    dir.join("definition.toml")
}

/// The initramfs a VM boots when the kit's is extended (a kernel tree's frontend).
pub fn initramfs(dir: &Path) -> PathBuf {
    dir.join("initrd.cpio")
}

/// `RUN/frontends/`: frontends vesperd built against users' kernel trees, by release
/// and inputs.
pub fn frontends(run_dir: &Path) -> PathBuf {
    run_dir.join("frontends")
}

/// The VM's own UEFI variable store (copied from OVMF's template on its first boot).
pub fn uefi_vars(dir: &Path) -> PathBuf {
    dir.join("OVMF_VARS.fd")
}

/// The relay channels' read positions, for the adoption.
pub fn channels_record(dir: &Path) -> PathBuf {
    dir.join("channels.json")
}

/// The record layouts of the probe-spec modules pushed into the guest, for the adoption.
pub fn layouts_record(dir: &Path) -> PathBuf {
    dir.join("layouts.json")
}

/// The mark of a guest fenced on this host (`vm fence`): while it exists, no VM of that
/// name starts here.
pub fn fence_mark(dir: &Path) -> PathBuf {
    dir.join("fenced")
}

/// The ELF symbol file made from the guest's kallsyms, for gdb.
pub fn symbol_file(dir: &Path) -> PathBuf {
    dir.join("kallsyms.o")
}

/// Where `path` is written before it is renamed into place (never half a file under
/// its final name).
pub fn partial(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// `RUN/dumps/NAME/`: the guest's vmcores (kept after the VM is gone).
pub fn dumps(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join("dumps").join(name)
}
