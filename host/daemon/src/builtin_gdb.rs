//! `vesper debug gdb` for builtin VMs: the VMM's own gdb server (`vesper_builtin::gdb`)
//! on the same socket name as QEMU guests' relay, `gdb.sock` in the VM's run
//! directory, started on the first request and gone with the VM. Each builtin VM is
//! registered at launch with its debug handle and the ELF it booted (the symbol file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vesper_api::{ApiError, ErrorCode, GdbSession, Reply, Response};
use vesper_builtin::gdb::GdbServer;
use vesper_builtin::{BootImage, Machine};

use crate::daemon::Shared;
use crate::debug_state::{Endpoint, Endpoints};

/// The first bytes of an ELF file.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

impl Endpoints {
    /// A builtin VM was started (a VM of the same name before it is forgotten). What
    /// it booted gives the symbols if it is an ELF (the mini frontend, an ELF vmlinux);
    /// a bzImage gives none.
    pub(crate) fn register(&self, guest: &str, machine: &Machine) {
        let image = match machine.boot_image() {
            BootImage::Elf { path, .. } => path,
            BootImage::Linux { kernel, .. } => kernel,
        };
        let symbols = is_elf(image).then(|| image.to_path_buf());
        let debug = machine.debug_handle();
        let old = self.lock().insert(
            guest.to_string(),
            Endpoint {
                debug,
                symbols,
                server: None,
            },
        );
        // Its listener ends with its VM, which has ended or is ending.
        drop(old);
    }

    /// A builtin VM's debugger handle (`vm pause` parks its vCPUs with it).
    pub(crate) fn debug_handle(&self, guest: &str) -> Option<vesper_hypervisor::DebugHandle> {
        self.lock().get(guest).map(|e| e.debug.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == ELF_MAGIC
}

/// Serves `vesper debug gdb` for builtin VM `guest`: starts its gdb server unless it
/// runs, and says how to attach.
pub(crate) fn session(daemon: &Shared, guest: &str, vmlinux: Option<PathBuf>) -> Response {
    let status = daemon.guest_status(guest)?;
    let gone = || {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the VM has exited; there is nothing to debug"),
        )
    };
    if status.state == "exited" {
        return Err(gone());
    }
    if let Some(v) = &vmlinux {
        if !v.is_file() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{}: no such symbol file; give an ELF with the guest's symbols",
                    v.display()
                ),
            ));
        }
    }
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, guest);
    let socket = vesper_api::run_dir::gdb_socket(&dir);
    let mut endpoints = daemon.kernels.builtin_gdb.lock();
    let e = endpoints.get_mut(guest).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!(
                "{guest}: this builtin VM has no debug handle; restart it with `vesper vm start`"
            ),
        )
    })?;
    if e.debug.ended() {
        return Err(gone());
    }
    if !e.server.as_ref().is_some_and(GdbServer::listening) {
        e.server = None;
        let server = GdbServer::spawn(guest, socket.clone(), e.debug.clone()).map_err(|err| {
            ApiError::new(
                ErrorCode::Internal,
                format!("{guest}: cannot serve the gdb endpoint: {err}"),
            )
        })?;
        e.server = Some(server);
    }
    let symbols = vmlinux.or_else(|| e.symbols.clone());
    let support = e.debug.support();
    drop(endpoints);
    tracing::info!(guest, ?support, "gdb endpoint of a builtin VM handed out");
    Ok(Reply::DebugGdb(GdbSession {
        guest: guest.to_string(),
        command: command(&socket, symbols.as_deref()),
        socket,
        symbol_file: symbols.unwrap_or_default(),
        text_base: 0,
        kaslr_offset: 0,
    }))
}

/// gdb's command line: the ELF as gdb's file, at the addresses it is linked at (a
/// builtin VM loads an ELF there), then the endpoint.
fn command(socket: &Path, symbols: Option<&Path>) -> Vec<String> {
    let files: Vec<String> = symbols
        .map(|s| format!("file {}", s.display()))
        .into_iter()
        .collect();
    gdb_command_line(&files, socket)
}

/// `gdb -nx` with no paging or prompts, the commands that load symbols, then `target
/// remote SOCKET`: the command line every `vesper debug gdb` hands out.
pub(crate) fn gdb_command_line(symbol_commands: &[String], socket: &Path) -> Vec<String> {
    let mut command: Vec<String> = vec!["gdb".into(), "-nx".into()];
    let ex = [
        "set pagination off".to_string(),
        "set confirm off".to_string(),
    ]
    .into_iter()
    .chain(symbol_commands.iter().cloned())
    .chain([format!("target remote {}", socket.display())]);
    for c in ex {
        command.push("-ex".into());
        command.push(c);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_loads_the_elf_then_attaches() {
        let c = command(Path::new("/run/g/gdb.sock"), Some(Path::new("/k/mini.elf")));
        let text = c.join(" ");
        assert!(text.starts_with("gdb -nx"), "{text}");
        let sym = c.iter().position(|w| w == "file /k/mini.elf").unwrap();
        let target = c
            .iter()
            .position(|w| w == "target remote /run/g/gdb.sock")
            .unwrap();
        assert!(sym < target, "{text}");
        let bare = command(Path::new("/s"), None);
        assert!(!bare.iter().any(|w| w.starts_with("file ")), "{bare:?}");
    }

    #[test]
    fn only_elf_files_are_symbol_files() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("a.elf");
        std::fs::write(&elf, b"\x7fELF\x02\x01").unwrap();
        let bz = dir.path().join("bzImage");
        std::fs::write(&bz, b"MZ\0\0HdrS").unwrap();
        assert!(is_elf(&elf));
        assert!(!is_elf(&bz));
        assert!(!is_elf(&dir.path().join("missing")));
    }
}
