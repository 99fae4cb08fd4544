//! vCPU registers over QMP: HMP's `info registers -a` (through `human-monitor-command`),
//! parsed into one plain [`CpuRegisters`] per vCPU. QMP has no structured register
//! query for x86, so this text is the interface; its format has been stable since
//! QEMU 2.x and is checked line by line here, each missing register a named error.

use serde::{Deserialize, Serialize};

use crate::{QemuError, Qmp};

/// vCPUs parsed at most (QEMU's x86 limit is far lower).
const MAX_CPUS: usize = 8192;

/// One vCPU's registers as QEMU shows them. In 32-bit or real mode QEMU prints only the
/// low halves (`EAX`…); those are zero-extended and `r8`..`r15` read 0.
#[allow(missing_docs)] // The registers are their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuRegisters {
    /// QEMU's CPU index (`CPU#N`), the guest kernel's CPU number on x86 q35 machines.
    pub cpu: u32,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    /// Segment selectors.
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    /// The FS and GS segment bases (`MSR_FS_BASE`, `MSR_GS_BASE`): in kernel mode
    /// `gs_base` is the CPU's per-CPU area.
    pub fs_base: u64,
    pub gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// Current privilege level: 0 kernel, 3 user.
    pub cpl: u8,
    /// Halted (`HLT=1`): idle, or stopped by the kernel.
    pub halted: bool,
    /// In 64-bit mode (QEMU printed `RAX`…, not `EAX`…).
    pub long_mode: bool,
}

impl Qmp {
    /// Every vCPU's registers, in CPU order (HMP `info registers -a`). The guest keeps
    /// running unless it was stopped: stop it first (`stop`) for a consistent set.
    pub fn cpu_registers(&mut self) -> Result<Vec<CpuRegisters>, QemuError> {
        let out = self.execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": "info registers -a" })),
        )?;
        let text = out.as_str().ok_or_else(|| {
            QemuError::QmpProtocol(format!("human-monitor-command returned {out}, not text"))
        })?;
        parse_info_registers(text)
    }
}

fn bad(cpu: Option<u32>, why: impl Into<String>) -> QemuError {
    QemuError::BadRegisters {
        cpu,
        why: why.into(),
    }
}

/// Parses `info registers -a`: blocks starting `CPU#N`, each with `NAME=HEX` fields
/// (`R8 =…` padded) and segment lines `CS =SEL BASE LIMIT FLAGS`.
pub fn parse_info_registers(text: &str) -> Result<Vec<CpuRegisters>, QemuError> {
    let mut cpus: Vec<CpuRegisters> = Vec::new();
    let mut block: Option<(u32, Vec<&str>)> = None;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(n) = line.trim().strip_prefix("CPU#") {
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| bad(None, format!("bad CPU header {line:?}")))?;
            if let Some((cpu, lines)) = block.take() {
                cpus.push(parse_cpu(cpu, &lines)?);
            }
            if cpus.len() >= MAX_CPUS {
                return Err(bad(None, format!("more than {MAX_CPUS} CPUs")));
            }
            if cpus.iter().any(|c| c.cpu == n) {
                return Err(bad(Some(n), "listed twice"));
            }
            block = Some((n, Vec::new()));
        } else if let Some((_, lines)) = &mut block {
            lines.push(line);
        } else if !line.trim().is_empty() {
            return Err(bad(None, format!("text before the first CPU#: {line:?}")));
        }
    }
    if let Some((cpu, lines)) = block.take() {
        cpus.push(parse_cpu(cpu, &lines)?);
    }
    if cpus.is_empty() {
        return Err(bad(None, "no CPU#N block in the output"));
    }
    Ok(cpus)
}

/// One segment line: selector and base.
struct Segment {
    selector: u16,
    base: u64,
}

fn parse_cpu(cpu: u32, lines: &[&str]) -> Result<CpuRegisters, QemuError> {
    let hex = |name: &str, v: &str| {
        u64::from_str_radix(v, 16).map_err(|_| bad(Some(cpu), format!("{name}={v:?} is not hex")))
    };
    let mut fields: Vec<(&'static str, u64)> = Vec::new();
    let mut segments: Vec<(&str, Segment)> = Vec::new();
    for line in lines {
        let seg = ["ES", "CS", "SS", "DS", "FS", "GS"]
            .into_iter()
            .find(|s| line.starts_with(s) && line[2..].starts_with(" ="));
        if let Some(name) = seg {
            let mut parts = line[4..].split_whitespace();
            let (Some(sel), Some(base)) = (parts.next(), parts.next()) else {
                return Err(bad(Some(cpu), format!("short segment line {line:?}")));
            };
            let selector = u16::from_str_radix(sel, 16)
                .map_err(|_| bad(Some(cpu), format!("{name} selector {sel:?} is not hex")))?;
            segments.push((
                name,
                Segment {
                    selector,
                    base: hex(name, base)?,
                },
            ));
            continue;
        }
        // `R8 =…`: padding before the `=`; `GDT=     base`: nothing after it. Only the
        // named fields below are kept; FPU/SSE/debug registers are skipped unparsed.
        let joined = line.replace(" =", "=");
        for tok in joined.split_whitespace() {
            if let Some((name, value)) = tok.split_once('=') {
                if let Some(known) = WANTED.iter().find(|w| **w == name) {
                    fields.push((known, hex(name, value)?));
                }
            }
        }
    }
    let get = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let long_mode = get("RAX").is_some();
    let need = |wide: &str, narrow: &str| -> Result<u64, QemuError> {
        let name = if long_mode { wide } else { narrow };
        get(name).ok_or_else(|| bad(Some(cpu), format!("no {name}")))
    };
    let high = |name: &str| -> Result<u64, QemuError> {
        if long_mode {
            get(name).ok_or_else(|| bad(Some(cpu), format!("no {name}")))
        } else {
            Ok(0)
        }
    };
    let seg = |name: &str| -> Result<&Segment, QemuError> {
        segments
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| bad(Some(cpu), format!("no {name} segment")))
    };
    let cpl = get("CPL").ok_or_else(|| bad(Some(cpu), "no CPL"))?;
    Ok(CpuRegisters {
        cpu,
        rax: need("RAX", "EAX")?,
        rbx: need("RBX", "EBX")?,
        rcx: need("RCX", "ECX")?,
        rdx: need("RDX", "EDX")?,
        rsi: need("RSI", "ESI")?,
        rdi: need("RDI", "EDI")?,
        rbp: need("RBP", "EBP")?,
        rsp: need("RSP", "ESP")?,
        r8: high("R8")?,
        r9: high("R9")?,
        r10: high("R10")?,
        r11: high("R11")?,
        r12: high("R12")?,
        r13: high("R13")?,
        r14: high("R14")?,
        r15: high("R15")?,
        rip: need("RIP", "EIP")?,
        rflags: need("RFL", "EFL")?,
        cs: seg("CS")?.selector,
        ss: seg("SS")?.selector,
        ds: seg("DS")?.selector,
        es: seg("ES")?.selector,
        fs: seg("FS")?.selector,
        gs: seg("GS")?.selector,
        fs_base: seg("FS")?.base,
        gs_base: seg("GS")?.base,
        cr0: get("CR0").ok_or_else(|| bad(Some(cpu), "no CR0"))?,
        cr2: get("CR2").ok_or_else(|| bad(Some(cpu), "no CR2"))?,
        cr3: get("CR3").ok_or_else(|| bad(Some(cpu), "no CR3"))?,
        cr4: get("CR4").ok_or_else(|| bad(Some(cpu), "no CR4"))?,
        efer: get("EFER").unwrap_or(0),
        cpl: u8::try_from(cpl)
            .ok()
            .filter(|c| *c <= 3)
            .ok_or_else(|| bad(Some(cpu), format!("CPL {cpl} is not 0-3")))?,
        halted: get("HLT").unwrap_or(0) != 0,
        long_mode,
    })
}

/// The `NAME=` fields kept.
const WANTED: &[&str] = &[
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13",
    "R14", "R15", "RIP", "RFL", "EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP", "EIP",
    "EFL", "CPL", "HLT", "CR0", "CR2", "CR3", "CR4", "EFER",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-vCPU guest in the kit's kernel (5-level paging, both CPUs idle in HLT), as
    /// QEMU 7.2 printed it, CRLF and all.
    const TWO_CPUS: &str = include_str!("registers/info-registers-2cpu.txt");
    /// A vCPU at reset (`-S`): real mode, 32-bit names.
    const AT_RESET: &str = include_str!("registers/info-registers-reset.txt");

    #[test]
    fn a_64_bit_guest_parses_per_cpu() {
        let cpus = parse_info_registers(TWO_CPUS).unwrap();
        assert_eq!(cpus.len(), 2);
        let c0 = &cpus[0];
        assert_eq!(c0.cpu, 0);
        assert!(c0.long_mode && c0.halted);
        assert_eq!(c0.cpl, 0);
        assert_eq!(c0.rax, 0x1ad40);
        assert_eq!(c0.rdx, 0x4000_0000_0000_0000);
        assert_eq!(c0.rbp, 0xffff_ffff_9aa1_aa40);
        assert_eq!(c0.rsp, 0xffff_ffff_9aa0_3e98);
        assert_eq!(c0.r8, 0);
        assert_eq!(c0.r9, 0x3157_425b);
        assert_eq!(c0.r15, 0x14790);
        assert_eq!(c0.rip, 0xffff_ffff_99a1_7a0b);
        assert_eq!(c0.rflags, 0x246);
        assert_eq!((c0.cs, c0.ss, c0.ds, c0.gs), (0x10, 0x18, 0, 0));
        assert_eq!(c0.gs_base, 0xff2e_2019_5e80_0000);
        assert_eq!(c0.fs_base, 0);
        assert_eq!(c0.cr3, 0x1ff0_0000);
        assert_eq!(c0.cr4, 0x0075_1eb0);
        assert_eq!(c0.efer, 0xd01);
        let c1 = &cpus[1];
        assert_eq!(c1.cpu, 1);
        assert_eq!(c1.rsp, 0xff49_6341_c009_bed8);
        assert_eq!(c1.gs_base, 0xff2e_2019_5e90_0000);
        assert_eq!(c1.cr3, 0x12a1_0000);
        // LF line ends read the same.
        assert_eq!(
            parse_info_registers(&TWO_CPUS.replace("\r\n", "\n")).unwrap(),
            cpus
        );
    }

    #[test]
    fn a_cpu_in_real_mode_reads_zero_extended() {
        let cpus = parse_info_registers(AT_RESET).unwrap();
        assert_eq!(cpus.len(), 1);
        let c = &cpus[0];
        assert!(!c.long_mode && !c.halted);
        assert_eq!(c.rip, 0xfff0);
        assert_eq!(c.rdx, 0x0006_0fb1);
        assert_eq!(c.rflags, 2);
        assert_eq!(c.cs, 0xf000);
        assert_eq!(c.r15, 0);
        assert_eq!(c.cr0, 0x6000_0010);
    }

    #[test]
    fn bad_output_is_a_named_error() {
        let err = |text: &str| parse_info_registers(text).unwrap_err().to_string();
        assert!(err("").contains("no CPU#N block"), "{}", err(""));
        assert!(err("Error: no CPU\n").contains("text before the first CPU#"));
        assert!(err("CPU#x\n").contains("bad CPU header"));
        let no_rip = TWO_CPUS.replace("RIP=", "XIP=");
        assert!(err(&no_rip).contains("CPU 0: no RIP"), "{}", err(&no_rip));
        let bad_hex = TWO_CPUS.replacen("RBX=0000000000000000", "RBX=00000000000000zz", 1);
        assert!(err(&bad_hex).contains("RBX=\"00000000000000zz\" is not hex"));
        let no_cs = TWO_CPUS.replace("CS =", "XS =");
        assert!(err(&no_cs).contains("no CS segment"));
        let twice = format!("{TWO_CPUS}{TWO_CPUS}");
        assert!(
            err(&twice).contains("CPU 0: listed twice"),
            "{}",
            err(&twice)
        );
        let cpl = TWO_CPUS.replacen("CPL=0", "CPL=7", 1);
        assert!(err(&cpl).contains("CPL 7 is not 0-3"));
        let overflow = TWO_CPUS.replacen("RAX=000000000001ad40", "RAX=1000000000001ad40", 1);
        assert!(err(&overflow).contains("is not hex"));
    }
}
