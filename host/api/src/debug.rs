//! The `vesper debug` operations over an opened kernel, shared by vesperd (live
//! guests) and the CLI (vmcore files read in process), so both answer alike.

use vesper_debug::dwarf::DwarfFiles;
use vesper_debug::expr::TypeSource;
use vesper_debug::unwind::Registers;
use vesper_debug::{DebugError, Kernel, KernelMemory};

use crate::{ApiError, DebugInfo, DebugOp, ErrorCode, Reply, Response, SymbolMatch};

/// Matches `debug sym PREFIX*` lists at most.
const MAX_MATCHES: usize = 500;

/// The API error for a debug failure: bad requests (65) apart from what the guest's
/// memory did (1).
pub fn debug_error(guest: &str, e: DebugError) -> ApiError {
    let code = match &e {
        DebugError::Expr(_) | DebugError::UnknownSymbol(_) | DebugError::NoTask(_) => {
            ErrorCode::BadRequest
        }
        DebugError::Btf(vesper_debug::btf::BtfError::NoMember { .. }) => ErrorCode::BadRequest,
        // The file the user named is wrong, not the guest.
        DebugError::Dwarf(_) => ErrorCode::BadRequest,
        _ => ErrorCode::GuestFailed,
    };
    ApiError::new(code, format!("{guest}: {e}"))
}

fn parse_addr(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None if s.chars().all(|c| c.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// Serves `op` over the kernel `k` of `guest` (a VM's name, or a vmcore's path):
/// the same for a live guest (vesperd) and a dump (the CLI, in process). `cpus` are
/// the vCPUs' registers, CPU n at index n, when the source has them (a paused VM, a
/// vmcore's NT_PRSTATUS notes); `bt` of a running task or a CPU needs them. `Gdb`,
/// `Dump` and `Dumps` need a live VM and are the daemon's. `dwarf` keeps the files
/// `read --vmlinux` opened, so a second read does not index again.
pub fn serve(
    k: &Kernel,
    guest: &str,
    op: DebugOp,
    ram_bytes: u64,
    cpus: &[Registers],
    dwarf: &DwarfFiles,
) -> Response {
    let guest_s = guest.to_string();
    let fail = |e| debug_error(guest, e);
    match op {
        DebugOp::Info => Ok(Reply::DebugInfo(DebugInfo {
            guest: guest_s,
            release: k.release().to_string(),
            kaslr_offset: k.kaslr_offset(),
            vmcoreinfo_paddr: k.vmcoreinfo_paddr(),
            symbols: k.symbols().len(),
            page_table_root: k.page_tables().root,
            five_level: k.page_tables().five_level,
            ram_mib: ram_bytes >> 20,
            ram_source: k.phys().describe(),
        })),
        DebugOp::Sym { query } => {
            let q = query.trim();
            let symbols: Vec<SymbolMatch> = if let Some(addr) = parse_addr(q) {
                let (s, off) = k.symbols().symbolize(addr).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{guest}: no kernel symbol at or below {addr:#x}"),
                    )
                })?;
                vec![SymbolMatch {
                    symbol: s.clone(),
                    offset: Some(off),
                }]
            } else if let Some(prefix) = q.strip_suffix('*') {
                let found = k.symbols().with_prefix(prefix, MAX_MATCHES);
                if found.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{guest}: no kernel symbol starts with {prefix:?} (module symbols are not in the kernel's table)"),
                    ));
                }
                found
                    .into_iter()
                    .map(|s| SymbolMatch {
                        symbol: s.clone(),
                        offset: None,
                    })
                    .collect()
            } else {
                let all = k.symbols().lookup_all(q);
                if all.is_empty() {
                    return Err(fail(DebugError::UnknownSymbol(q.to_string())));
                }
                all.into_iter()
                    .map(|s| SymbolMatch {
                        symbol: s.clone(),
                        offset: None,
                    })
                    .collect()
            };
            Ok(Reply::DebugSymbols {
                guest: guest_s,
                symbols,
            })
        }
        DebugOp::Read {
            expr,
            count,
            hex,
            vmlinux,
        } => {
            let value = match vmlinux {
                None => vesper_debug::expr::read(k, &expr, count, hex),
                Some(path) => dwarf.get(&path).map_err(DebugError::from).and_then(|f| {
                    vesper_debug::expr::read_with(k, TypeSource::Dwarf(&f), &expr, count, hex)
                }),
            }
            .map_err(fail)?;
            Ok(Reply::DebugValue {
                guest: guest_s,
                value,
            })
        }
        DebugOp::Ps => {
            let list = vesper_debug::tasks::list_tasks(k).map_err(fail)?;
            Ok(Reply::DebugTasks {
                guest: guest_s,
                tasks: list.tasks,
                torn: list.torn,
            })
        }
        DebugOp::Bt { pid, cpu } => {
            let backtrace = match (pid, cpu) {
                (Some(pid), None) => vesper_debug::unwind::backtrace_task(k, pid, cpus),
                (None, Some(cpu)) => match cpus.get(cpu as usize) {
                    Some(regs) => vesper_debug::unwind::backtrace_cpu(k, cpu, regs),
                    None if cpus.is_empty() => Err(DebugError::NoTask(format!(
                        "no vCPU registers in this source for CPU {cpu}"
                    ))),
                    None => Err(DebugError::NoTask(format!(
                        "no CPU {cpu}: the guest has {} (0..{})",
                        cpus.len(),
                        cpus.len() - 1
                    ))),
                },
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{guest}: bt takes a task's PID or --cpu N, one of them"),
                    ))
                }
            }
            .map_err(fail)?;
            Ok(Reply::DebugBacktrace {
                guest: guest_s,
                backtrace,
            })
        }
        DebugOp::Gdb { .. } | DebugOp::Dump { .. } | DebugOp::Dumps => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{guest}: gdb and dumps need a running VM, not a vmcore"),
        )),
        DebugOp::Dmesg => {
            let layout = vesper_debug::printk::PrintkLayout::from_vmcoreinfo(|key| {
                k.vmcoreinfo().lookup(key)
            })
            .map_err(|e| fail(e.into()))?;
            let log = vesper_debug::printk::read_log(k as &dyn KernelMemory, &layout)
                .map_err(|e| fail(e.into()))?;
            Ok(Reply::DebugLog {
                guest: guest_s,
                records: log.records,
                torn: log.torn,
                recycled: log.recycled,
            })
        }
    }
}
