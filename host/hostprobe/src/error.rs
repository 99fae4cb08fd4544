//! The crate's one error.

use thiserror::Error;

/// Why host probes cannot run (or one of them cannot).
#[derive(Debug, Error)]
pub enum HostProbeError {
    /// The crate was built without clang: no eBPF object.
    #[error("vesperd was built without its eBPF objects (no clang at build time); install clang, libbpf-dev and linux-libc-dev (`cargo run -p vesper-guest-kit -- build`) and rebuild")]
    NotBuilt,
    /// Loading eBPF tracing programs needs root (CAP_BPF and CAP_PERFMON).
    #[error("host probes need root (CAP_BPF, CAP_PERFMON); vesperd runs as uid {euid}")]
    NotRoot {
        /// The daemon's effective uid.
        euid: u32,
    },
    /// The host kernel has no BTF, which the programs' CO-RE relocations need.
    #[error("the host kernel has no BTF ({path} missing; it needs CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf {
        /// Where it was looked for.
        path: String,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error("no tracefs at /sys/kernel/tracing and mounting it failed (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs(#[source] std::io::Error),
    /// The object is not a BPF ELF aya can read, or a map in it could not be made.
    #[error("cannot load the eBPF object{}", lockdown_hint())]
    Object(#[source] Box<aya::EbpfError>),
    /// The object lacks a program or map this crate needs.
    #[error("the eBPF object has no {kind} {name:?}")]
    Missing {
        /// `program` or `map`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The kernel's verifier refused a program.
    #[error("the kernel's verifier refused eBPF program {program:?}: {log}")]
    Verifier {
        /// Program name.
        program: String,
        /// The verifier's log, shortened to its last lines.
        log: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be loaded or attached for another reason.
    #[error("eBPF program {program:?} ({tracepoint}){}", lockdown_hint())]
    Program {
        /// Program name.
        program: String,
        /// The tracepoint it is for (`kvm:kvm_exit`).
        tracepoint: String,
        /// What aya said.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("eBPF map {map:?}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What aya said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The probe thread could not be started.
    #[error("cannot start the host-probe thread")]
    Thread(#[source] std::io::Error),
}

/// The kernel's lockdown mode when it restricts BPF, as a hint for an error.
fn lockdown_hint() -> String {
    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(s) if !s.contains("[none]") => {
            format!(" (the kernel is locked down: {})", s.trim())
        }
        _ => String::new(),
    }
}

/// The verifier's log cut to what explains the refusal: its last `LINES` lines (the
/// error is at the end), at most `CHARS` characters.
pub fn shorten_log(log: &str) -> String {
    const LINES: usize = 12;
    const CHARS: usize = 1500;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let skipped = lines.len().saturating_sub(LINES);
    let mut out = lines[skipped..].join("\n");
    if out.len() > CHARS {
        let cut = out.len() - CHARS;
        let cut = (cut..out.len())
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(cut);
        out = out[cut..].to_string();
    }
    if skipped > 0 {
        out = format!("[{skipped} earlier lines of the verifier log left out]\n{out}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_keeps_its_end_and_says_what_it_left_out() {
        let log: String = (0..100)
            .map(|i| format!("{i}: r1 = r2\n"))
            .collect::<String>()
            + "R0 invalid mem access 'map_value_or_null'\n";
        let s = shorten_log(&log);
        assert!(
            s.ends_with("R0 invalid mem access 'map_value_or_null'"),
            "{s}"
        );
        assert!(s.starts_with("[89 earlier lines"), "{s}");
        assert!(!s.contains("\n5: r1"), "{s}");
        assert_eq!(shorten_log("one\n\ntwo\n"), "one\ntwo");
    }
}
