//! `cargo run -p vesper-abi-header [PATH]`: (re)writes the guest module's ABI header.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../guest-module/include/vesper_abi.h")
        });
    match std::fs::write(&path, vesper_shared_abi::c_header()) {
        Ok(()) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vesper-abi-header: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
