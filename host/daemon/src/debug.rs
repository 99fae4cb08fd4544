//! `vesper debug`: the guest kernel read from the host. vesperd maps a QEMU guest's RAM
//! read-only from the memfd QEMU backs it with (`/proc/PID/fd`), opens the kernel in
//! it (`vesper_debug::Kernel`: VMCOREINFO, page tables, kallsyms, BTF) once, and keeps
//! it until the guest reboots into another kernel layout. Nothing here needs the
//! guest's frontend: a paused, hung or panicked guest reads the same.
//!
//! Also `vm pause|resume` (QMP `stop`/`cont`), which debugging a guest calls for.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vesper_api::{ApiError, DebugOp, DumpFile, ErrorCode, GdbSession, Reply, Response, Vmm};
use vesper_debug::unwind::Registers;
use vesper_debug::vmcore::{ControlRegs, DumpOptions, KernelLayout, PrStatusRegs};
use vesper_debug::{Kernel, MappedRam};

use crate::daemon::Shared;
use crate::debug_state::Kernels;
use crate::qmp::{qmp_execute, qmp_status};

/// The guest's RAM file: QEMU's `memory-backend-memfd`, found among its open files.
fn ram_file(pid: u32) -> Result<std::fs::File, ApiError> {
    let found = vesper_qemu::memfd_of(pid, vesper_qemu::RAM_MEMFD_NAME).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot list QEMU's files (/proc/{pid}/fd): {e}"),
        )
    })?;
    if let Some(path) = found {
        return std::fs::File::open(&path).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot open QEMU's guest RAM ({}): {e}", path.display()),
            )
        });
    }
    Err(ApiError::new(
        ErrorCode::GuestFailed,
        format!(
            "QEMU (pid {pid}) has no shared guest-RAM memfd: a VM started by an older vesperd? Restart it with `vesper vm start`"
        ),
    ))
}

/// The guest's QEMU pid, RAM size and whether Vesper attached it (did not start it),
/// refusing builtin and exited VMs.
fn target(daemon: &Shared, guest: &str) -> Result<(u32, u64, bool), ApiError> {
    let status = daemon.guest_status(guest)?;
    if status.vmm == Vmm::Builtin {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{guest}: `vesper debug` reads QEMU guests' RAM; builtin VMs are not supported yet"
            ),
        ));
    }
    if status.state == "exited" {
        return Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the VM has exited; its memory is gone"),
        ));
    }
    let pid = status.pid.ok_or_else(|| {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: no QEMU process"),
        )
    })?;
    Ok((
        pid,
        u64::from(status.memory_mib) << 20,
        status.attached.is_some(),
    ))
}

impl Kernels {
    /// Starts the guest's gdb relay unless it runs already.
    fn gdb_relay(&self, guest: &str, pid: u32, dir: &Path) -> Result<(), ApiError> {
        let mut running = self.gdb_relays.lock().expect("relays lock");
        if running.contains(&(guest.to_string(), pid)) {
            return Ok(());
        }
        let upstream = vesper_api::run_dir::qemu_gdb_socket(dir);
        if !upstream.exists() {
            return Err(ApiError::new(
                ErrorCode::GuestFailed,
                format!(
                    "{guest}: QEMU has no gdbstub ({}): a VM started by an older vesperd? Restart it",
                    upstream.display()
                ),
            ));
        }
        crate::gdbproxy::spawn(
            guest.to_string(),
            vesper_api::run_dir::gdb_socket(dir),
            upstream,
            vesper_api::run_dir::qmp_socket(dir),
        )
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("{guest}: cannot serve the gdb endpoint: {e}"),
            )
        })?;
        running.insert((guest.to_string(), pid));
        Ok(())
    }

    /// The guest's kernel: the one opened before if it is still the one in memory
    /// (its VMCOREINFO unchanged where it was), else opened afresh.
    pub(crate) fn get(
        &self,
        guest: &str,
        pid: u32,
        ram_bytes: u64,
    ) -> Result<Arc<Kernel>, ApiError> {
        self.get_from(guest, pid, ram_bytes, None)
    }

    /// [`Self::get`], for an attached VM (`attached`: vesperd's QMP socket of it) too.
    pub(crate) fn get_from(
        &self,
        guest: &str,
        pid: u32,
        ram_bytes: u64,
        attached: Option<&Path>,
    ) -> Result<Arc<Kernel>, ApiError> {
        if let Some((p, k)) = self
            .opened
            .lock()
            .expect("kernels lock")
            .get(guest)
            .cloned()
        {
            if p == pid && still_there(&k) {
                return Ok(k);
            }
        }
        // An attached VM's RAM: laid out as its QEMU says (ram_source.rs).
        let (ram, ranges): (Arc<dyn vesper_debug::PhysMemory>, _) = match attached {
            Some(qmp) => crate::ram_source::open(guest, pid, qmp)?,
            None => {
                let ram = map_ram(guest, pid, ram_bytes)?;
                let ranges = ram.ranges();
                (Arc::new(ram), ranges)
            }
        };
        let k = Arc::new(
            Kernel::open(ram, &ranges).map_err(|e| vesper_api::debug::debug_error(guest, e))?,
        );
        tracing::info!(
            guest,
            release = k.release(),
            ram = %k.phys().describe(),
            kaslr = format_args!("{:#x}", k.kaslr_offset()),
            symbols = k.symbols().len(),
            "guest kernel opened from its RAM"
        );
        self.opened
            .lock()
            .expect("kernels lock")
            .insert(guest.to_string(), (pid, k.clone()));
        Ok(k)
    }
}

/// The guest's RAM, mapped read-only from QEMU's memfd.
pub(crate) fn map_ram(guest: &str, pid: u32, ram_bytes: u64) -> Result<MappedRam, ApiError> {
    MappedRam::map(ram_file(pid)?, vesper_debug::ram::q35_layout(ram_bytes))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{guest}: guest RAM: {e}")))
}

/// Whether `k`'s VMCOREINFO is still where and what it was (a reboot moves the kernel).
fn still_there(k: &Kernel) -> bool {
    let raw = k.vmcoreinfo().raw().as_bytes();
    let mut now = vec![0u8; raw.len()];
    k.phys().read_phys(k.vmcoreinfo_paddr(), &mut now).is_ok() && now == raw
}

/// Where a guest's vmcores go (apart from its VM directory, which goes with the VM).
fn dump_dir(daemon: &Shared, guest: &str) -> std::path::PathBuf {
    vesper_api::run_dir::dumps(&daemon.config.run_dir, guest)
}

/// The guest's saved vmcores, oldest first.
fn dumps(daemon: &Shared, guest: &str) -> Response {
    let mut dumps: Vec<DumpFile> = std::fs::read_dir(dump_dir(daemon, guest))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| {
                    let m = e.metadata().ok().filter(|m| m.is_file())?;
                    let written = m
                        .modified()
                        .ok()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_secs();
                    Some(DumpFile {
                        path: e.path(),
                        bytes: m.len(),
                        written,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    dumps.sort_by_key(|d| (d.written, d.path.clone()));
    Ok(Reply::DebugDumps {
        guest: guest.to_string(),
        dumps,
    })
}

/// Writes a vmcore of the guest, pausing it meanwhile if it runs: RAM and the vCPUs'
/// registers then come from one instant (a live dump costs the guest the dump's time,
/// about 3 s for 512 MiB under TCG). A panicked guest is already paused by QEMU
/// (`-action panic=pause`), and a hung one is paused like a running one.
fn dump(daemon: &Shared, k: &Kernel, guest: &str, name: Option<String>, vm_dir: &Path) -> Response {
    let dir = dump_dir(daemon, guest);
    std::fs::create_dir_all(&dir).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{guest}: cannot create {}: {e}", dir.display()),
        )
    })?;
    let name = name.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        format!("{guest}-{secs}.vmcore")
    });
    let qmp = vesper_api::run_dir::qmp_socket(vm_dir);
    let written = paused(guest, vm_dir, || {
        let layout = KernelLayout::of(k);
        let opts = DumpOptions {
            cpus: cpu_notes(k, guest, &qmp),
            ..DumpOptions::default()
        };
        Ok(vesper_debug::vmcore::write_vmcore(
            k.phys(),
            &k.phys_ranges(),
            k.vmcoreinfo(),
            Some(&layout),
            &dir,
            &name,
            &opts,
        ))
    })?;
    let dump = written.map_err(|e| {
        ApiError::new(
            ErrorCode::GuestFailed,
            format!("{guest}: vmcore not written: {e}"),
        )
    })?;
    tracing::info!(guest, path = %dump.path.display(), bytes = dump.bytes_written, "vmcore written");
    Ok(Reply::DebugDump {
        guest: guest.to_string(),
        dump,
    })
}

/// Every vCPU's registers for the dump's `NT_PRSTATUS` notes, each with the pid of the
/// task running on it (as kdump names it). Without them the dump is still written: a
/// reader loses only the running tasks' exact registers, so a failure is a warning.
fn cpu_notes(k: &Kernel, guest: &str, qmp: &Path) -> Vec<PrStatusRegs> {
    let regs = vesper_qemu::Qmp::connect_waiting(qmp, Duration::from_secs(5))
        .and_then(|mut q| q.cpu_registers());
    let regs = match regs {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(guest, "vmcore without CPU registers: {e}");
            return Vec::new();
        }
    };
    regs.iter()
        .map(|r| {
            let pid = match vesper_debug::tasks::current_task(k, r.cpu) {
                Ok(t) => u32::try_from(t.pid).unwrap_or(0),
                Err(e) => {
                    tracing::warn!(guest, cpu = r.cpu, "task on the CPU unknown: {e}");
                    0
                }
            };
            prstatus(r, pid)
        })
        .collect()
}

/// QEMU's view of a vCPU as an `NT_PRSTATUS` (plus the control registers for QEMU's
/// CPU-state note).
fn prstatus(r: &vesper_qemu::CpuRegisters, pid: u32) -> PrStatusRegs {
    PrStatusRegs {
        pid,
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        // -1: not in a system call, as the kernel's crash_setup_regs leaves it.
        orig_rax: u64::MAX,
        rip: r.rip,
        cs: r.cs.into(),
        rflags: r.rflags,
        rsp: r.rsp,
        ss: r.ss.into(),
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds.into(),
        es: r.es.into(),
        fs: r.fs.into(),
        gs: r.gs.into(),
        control: ControlRegs {
            cr0: r.cr0,
            cr2: r.cr2,
            cr3: r.cr3,
            cr4: r.cr4,
        },
    }
}

/// A `read` or `gdb` without `--vmlinux` takes the one the guest's definition names
/// (a kernel tree's own vmlinux, read where it is).
fn with_defined_vmlinux(daemon: &Shared, guest: &str, mut op: DebugOp) -> DebugOp {
    if let DebugOp::Read { vmlinux, .. } | DebugOp::Gdb { vmlinux } = &mut op {
        if vmlinux.is_none() {
            *vmlinux = crate::persist::defined_vmlinux(&daemon.config.run_dir, guest);
        }
    }
    op
}

/// Serves one `debug` request (blocking work on a blocking thread).
pub(crate) async fn debug(daemon: &Shared, guest: String, op: DebugOp) -> Response {
    if op == DebugOp::Dumps {
        // A guest's vmcores outlive its VM (a restart, a stop): list them whenever
        // there are any; only a name with neither is unknown.
        if !crate::daemon::valid_name(&guest) || !dump_dir(daemon, &guest).is_dir() {
            daemon.guest_status(&guest)?;
        }
        return dumps(daemon, &guest);
    }
    let op = with_defined_vmlinux(daemon, &guest, op);
    // Builtin VMs: the VMM's own gdb server; the other ops read QEMU guests only.
    if let DebugOp::Gdb { vmlinux } = &op {
        if daemon.guest_status(&guest)?.vmm == Vmm::Builtin {
            return crate::builtin_gdb::session(daemon, &guest, vmlinux.clone());
        }
    }
    let (pid, ram_bytes, attached) = target(daemon, &guest)?;
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, &guest);
    let daemon = daemon.clone();
    tokio::task::spawn_blocking(move || {
        let qmp = vesper_api::run_dir::qmp_socket(&dir);
        let k =
            daemon
                .kernels
                .get_from(&guest, pid, ram_bytes, attached.then_some(qmp.as_path()))?;
        match op {
            DebugOp::Gdb { vmlinux } => {
                daemon.kernels.gdb_relay(&guest, pid, &dir)?;
                gdb(&k, &guest, &dir, vmlinux)
            }
            DebugOp::Dump { name } => dump(&daemon, &k, &guest, name, &dir),
            DebugOp::Dumps => unreachable!("served without opening the kernel"),
            op @ DebugOp::Bt { .. } => paused(&guest, &dir, || {
                let cpus = cpu_registers(&guest, &dir)?;
                vesper_api::debug::serve(&k, &guest, op, ram_bytes, &cpus, &daemon.dwarf)
            }),
            op => vesper_api::debug::serve(&k, &guest, op, ram_bytes, &[], &daemon.dwarf),
        }
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("debug worker failed: {e}")))?
}

/// Runs `f` with the guest paused (QMP `stop`, then `cont` if it was running): a
/// stack or a register set read from a running guest would be torn.
fn paused<T>(
    guest: &str,
    vm_dir: &Path,
    f: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let qmp = vesper_api::run_dir::qmp_socket(vm_dir);
    let was_running = qmp_status(&qmp).as_deref() == Some("running");
    if was_running {
        qmp_execute(&qmp, "stop").map_err(|e| {
            ApiError::new(
                ErrorCode::GuestFailed,
                format!("{guest}: QMP stop failed: {e}"),
            )
        })?;
    }
    let out = f();
    if was_running {
        if let Err(e) = qmp_execute(&qmp, "cont") {
            tracing::warn!(guest, "QMP cont after pausing for debug failed: {e}");
        }
    }
    out
}

/// Each vCPU's registers from QMP, CPU n at index n (the guest should be paused).
fn cpu_registers(guest: &str, vm_dir: &Path) -> Result<Vec<Registers>, ApiError> {
    let regs = vesper_qemu::Qmp::connect_waiting(
        &vesper_api::run_dir::qmp_socket(vm_dir),
        Duration::from_secs(5),
    )
    .and_then(|mut q| q.cpu_registers())
    .map_err(|e| {
        ApiError::new(
            ErrorCode::GuestFailed,
            format!("{guest}: vCPU registers unreadable over QMP: {e}"),
        )
    })?;
    // QEMU numbers its CPUs from 0; a number past any machine's is not believed.
    let regs: Vec<_> = regs.into_iter().filter(|r| r.cpu < 4096).collect();
    let mut out =
        vec![Registers::default(); regs.iter().map(|r| r.cpu as usize + 1).max().unwrap_or(0)];
    for r in &regs {
        out[r.cpu as usize] = vesper_debug::registers_from!(r);
    }
    Ok(out)
}

/// Writes the kallsyms symbol file next to QEMU's gdbstub and says how to attach.
fn gdb(k: &Kernel, guest: &str, dir: &Path, vmlinux: Option<std::path::PathBuf>) -> Response {
    let socket = vesper_api::run_dir::gdb_socket(dir);
    if let Some(v) = &vmlinux {
        if !v.is_file() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{}: no such vmlinux (Debian ships it in linux-image-{}-dbg)",
                    v.display(),
                    k.release()
                ),
            ));
        }
    }
    let sym = vesper_debug::symfile::build(k.symbols())
        .map_err(|e| ApiError::new(ErrorCode::GuestFailed, format!("{guest}: {e}")))?;
    let path = vesper_api::run_dir::symbol_file(dir);
    let tmp = vesper_api::run_dir::partial(&path);
    std::fs::write(&tmp, &sym.bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ApiError::new(
                ErrorCode::Internal,
                format!("{guest}: cannot write {}: {e}", path.display()),
            )
        })?;
    let mut symbols = Vec::new();
    if let Some(v) = &vmlinux {
        symbols.push(format!(
            "symbol-file {} -o {:#x}",
            v.display(),
            k.kaslr_offset()
        ));
    }
    symbols.push(format!(
        "add-symbol-file {} -s .text {:#x}",
        path.display(),
        sym.base
    ));
    let command = crate::builtin_gdb::gdb_command_line(&symbols, &socket);
    Ok(Reply::DebugGdb(GdbSession {
        guest: guest.to_string(),
        socket,
        symbol_file: path,
        text_base: sym.base,
        kaslr_offset: k.kaslr_offset(),
        command,
    }))
}

/// `vm pause` / `vm resume`: QMP `stop` / `cont`; a builtin VM's vCPUs are parked and
/// released by its VMM (as its gdb server does).
pub(crate) async fn vm_pause(daemon: &Shared, name: &str, pause: bool) -> Response {
    let status = daemon.guest_status(name)?;
    if status.vmm == Vmm::Builtin {
        return builtin_pause(daemon, name, pause).await;
    }
    if status.state == "exited" {
        return Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{name}: the VM has exited"),
        ));
    }
    let qmp =
        vesper_api::run_dir::qmp_socket(&vesper_api::run_dir::of(&daemon.config.run_dir, name));
    let cmd = if pause { "stop" } else { "cont" };
    let name_s = name.to_string();
    tokio::task::spawn_blocking(move || qmp_execute(&qmp, cmd).map(|_| ()))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("QMP worker failed: {e}")))?
        .map_err(|e| {
            ApiError::new(
                ErrorCode::GuestFailed,
                format!("{name_s}: QMP {cmd} failed: {e}"),
            )
        })?;
    Ok(Reply::VmPaused {
        name: name.to_string(),
        paused: pause,
    })
}

async fn builtin_pause(daemon: &Shared, name: &str, pause: bool) -> Response {
    let handle = daemon
        .kernels
        .builtin_gdb
        .debug_handle(name)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{name}: the builtin VM has no debug handle (it has ended)"),
            )
        })?;
    let what = if pause { "pause" } else { "resume" };
    tokio::task::spawn_blocking(move || {
        if pause {
            handle.pause(Duration::from_secs(5))
        } else if handle.is_paused() {
            // Every vCPU continues.
            handle.resume(&[])
        } else {
            Ok(())
        }
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("pause worker failed: {e}")))?
    .map_err(|e| {
        ApiError::new(
            ErrorCode::GuestFailed,
            format!("{name}: cannot {what}: {e}"),
        )
    })?;
    Ok(Reply::VmPaused {
        name: name.to_string(),
        paused: pause,
    })
}

/// Whether a panic of `guest` is dumped: the policy's say (the guest's `dump`, else
/// `[dump] on_panic`), else vesperd's `--dump-on-panic`.
pub(crate) fn dumps_on_panic(daemon: &Shared, guest: &str) -> bool {
    let flag = daemon.config.dump_on_panic;
    match &daemon.config.policy {
        Some(p) => p.dumps(guest, flag),
        None => flag,
    }
}

/// Longest the failover engine waits for a panicked guest's vmcore: the policy's
/// `[dump] wait_secs`, 120 s without a policy.
fn panic_dump_wait(daemon: &Shared) -> Duration {
    let secs = daemon
        .config
        .policy
        .as_ref()
        .map_or(vesper_failover::DEFAULT_DUMP_WAIT_SECS, |p| {
            p.dump().wait_secs
        });
    Duration::from_secs(secs)
}

/// The hook a guest task calls on `GUEST_PANICKED` when its panics are dumped
/// ([`dumps_on_panic`]): marks the dump as under way — before the event is published,
/// so no failover action can come first — then writes it (QEMU paused the guest at
/// pvpanic) and lets the guest go on.
pub(crate) fn panic_hook(daemon: &Shared, guest: &str) -> Option<crate::qmp_events::PanicHook> {
    if !dumps_on_panic(daemon, guest) {
        return None;
    }
    let daemon = daemon.clone();
    Some(Arc::new(move |guest: &str| {
        let (done, wait) = tokio::sync::watch::channel(false);
        daemon
            .panic_dumps
            .0
            .lock()
            .expect("panic dumps lock")
            .insert(guest.to_string(), wait);
        let (daemon, guest) = (daemon.clone(), guest.to_string());
        tokio::spawn(async move {
            let name = format!(
                "{guest}-panic-{}.vmcore",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
            );
            match debug(&daemon, guest.clone(), DebugOp::Dump { name: Some(name) }).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(guest, "no vmcore of the panic: {}", e.message),
            }
            // QEMU paused the guest at pvpanic; its panic path goes on now.
            let qmp = vesper_api::run_dir::qmp_socket(&vesper_api::run_dir::of(
                &daemon.config.run_dir,
                &guest,
            ));
            match tokio::task::spawn_blocking(move || qmp_execute(&qmp, "cont")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(guest, "resuming the panicked guest failed: {e}"),
                Err(e) => tracing::warn!(guest, "resuming the panicked guest failed: {e}"),
            }
            let _ = done.send(true);
            daemon
                .panic_dumps
                .0
                .lock()
                .expect("panic dumps lock")
                .remove(&guest);
        });
    }))
}

/// Waits (bounded) for a vmcore of `guest` still being written.
pub(crate) async fn wait_for_dump(daemon: &Shared, guest: &str) {
    let wait = daemon
        .panic_dumps
        .0
        .lock()
        .expect("panic dumps lock")
        .get(guest)
        .cloned();
    if let Some(mut wait) = wait {
        tracing::info!(guest, "failover waits for the guest's vmcore");
        let limit = panic_dump_wait(daemon);
        let done = tokio::time::timeout(limit, wait.wait_for(|d| *d)).await;
        if done.is_err() {
            tracing::warn!(guest, "the vmcore took over {limit:?}; failing over anyway");
        }
    }
}
