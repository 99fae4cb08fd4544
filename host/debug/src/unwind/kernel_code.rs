//! The guest kernel's code as the unwinder sees it — vmlinux's ORC table and kallsyms,
//! each loaded module's ORC table and symbols (found by walking `modules`) — and where
//! a task's or a CPU's trace starts.

use std::ops::Range;

use super::orc::{OrcEntry, OrcTable, OrcVersion, MAX_ENTRIES};
use super::{unwind, Backtrace, CodeInfo, Location, Registers, Start};
use crate::btf::{Btf, Type};
use crate::error::DebugError;
use crate::kernel::Kernel;
use crate::memory::KernelMemory;
use crate::modules::MODULE_NAME_LEN;
use crate::tasks::{current_task, list_tasks, offset};

/// Most symbols a module's table may claim.
const MAX_MODULE_SYMBOLS: u64 = 1 << 18;
/// `Elf64_Sym`.
const ELF_SYM_SIZE: u64 = 24;
/// Longest symbol name read from a module's string table.
const MAX_NAME: usize = 128;

/// A module's code: where it is, its ORC table, its symbol table.
#[derive(Debug)]
struct ModuleCode {
    name: String,
    text: Vec<Range<u64>>,
    orc: Option<OrcTable>,
    /// Its function symbols, by address.
    symbols: Vec<ModuleSymbol>,
    strtab: u64,
}

/// A symbol of a module's `Elf64_Sym` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ModuleSymbol {
    addr: u64,
    size: u64,
    /// Offset of its name in the module's `strtab`.
    name: u64,
}

/// vmlinux's and the modules' code, for [`unwind`].
pub struct KernelCode<'k> {
    k: &'k Kernel,
    core: Option<OrcTable>,
    core_text: Vec<Range<u64>>,
    modules: Vec<ModuleCode>,
    /// Why the module list could not be read, if it could not.
    pub modules_problem: Option<String>,
}

impl<'k> KernelCode<'k> {
    /// Reads the tables' locations (and the module list) out of the guest.
    pub fn new(k: &'k Kernel) -> Result<Self, DebugError> {
        let version = OrcVersion::of_release(k.release());
        let sym = |n: &str| k.symbols().lookup(n).map(|s| s.addr);
        let core = match (
            sym("__start_orc_unwind_ip"),
            sym("__stop_orc_unwind_ip"),
            sym("__start_orc_unwind"),
        ) {
            (Some(ip), Some(stop), Some(entries)) if stop > ip => Some(OrcTable {
                ip_table: ip,
                entries,
                count: (stop - ip) / 4,
                version,
            }),
            _ => None,
        };
        let core_text = [("_stext", "_etext"), ("_sinittext", "_einittext")]
            .iter()
            .filter_map(|(a, b)| Some(sym(a)?..sym(b)?))
            .filter(|r| !r.is_empty())
            .collect();
        let (modules, modules_problem) = match read_modules(k, version) {
            Ok(m) => (m, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Ok(Self {
            k,
            core,
            core_text,
            modules,
            modules_problem,
        })
    }

    fn module_of(&self, ip: u64) -> Option<&ModuleCode> {
        self.modules
            .iter()
            .find(|m| m.text.iter().any(|r| r.contains(&ip)))
    }

    fn module_symbol(&self, m: &ModuleCode, ip: u64) -> Option<(String, u64)> {
        let i = m.symbols.partition_point(|s| s.addr <= ip).checked_sub(1)?;
        let ModuleSymbol {
            addr,
            size,
            name: name_off,
        } = m.symbols[i];
        // A symbol with a size must contain `ip`; one without (assembly) is taken.
        if size != 0 && ip - addr >= size {
            return None;
        }
        let name = read_c_string(self.k, m.strtab.checked_add(name_off)?)?;
        Some((name, ip - addr))
    }
}

impl CodeInfo for KernelCode<'_> {
    fn orc(&self, ip: u64) -> Result<Option<OrcEntry>, DebugError> {
        if self.core_text.iter().any(|r| r.contains(&ip)) {
            return match &self.core {
                Some(t) => Ok(t.find(self.k, ip)?),
                None => Ok(None),
            };
        }
        match self.module_of(ip).and_then(|m| m.orc) {
            Some(t) => Ok(t.find(self.k, ip)?),
            None => Ok(None),
        }
    }

    fn locate(&self, ip: u64) -> Option<Location> {
        if self.core_text.iter().any(|r| r.contains(&ip)) {
            let (s, offset) = self.k.symbols().symbolize(ip)?;
            return Some(Location {
                function: s.name.clone(),
                offset,
                module: None,
            });
        }
        let m = self.module_of(ip)?;
        let (function, offset) = self
            .module_symbol(m, ip)
            .unwrap_or_else(|| (format!("{}.text", m.name), ip - m.text[0].start));
        Some(Location {
            function,
            offset,
            module: Some(m.name.clone()),
        })
    }
}

fn read_c_string(k: &Kernel, addr: u64) -> Option<String> {
    let mut buf = [0u8; MAX_NAME];
    // The name may end just before an unmapped page: read up to the page end first.
    let to_page_end = (4096 - (addr & 4095)) as usize;
    let first = to_page_end.min(MAX_NAME);
    k.read(addr, &mut buf[..first]).ok()?;
    if !buf[..first].contains(&0) && first < MAX_NAME {
        k.read(addr + first as u64, &mut buf[first..]).ok()?;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Offsets into `struct module` for the two layouts: `core_layout`/`init_layout`
/// (up to 6.3) and `mem[]` (6.4 on).
struct ModuleLayout {
    list: u64,
    name: u64,
    /// (offset of `base`, offset of `size`) per text area.
    areas: Vec<(u64, u64)>,
    num_orcs: Option<u64>,
    orc_ip: Option<u64>,
    orc: Option<u64>,
    kallsyms: Option<u64>,
    symtab: u64,
    num_symtab: u64,
    strtab: u64,
}

impl ModuleLayout {
    fn new(btf: &Btf) -> Result<Self, DebugError> {
        let m = btf
            .struct_named("module")
            .ok_or_else(|| DebugError::NoTypes("BTF has no struct module".into()))?;
        let mut areas = Vec::new();
        for layout in ["core_layout", "init_layout"] {
            if let (Ok(b), Ok(s)) = (
                offset(btf, m, &format!("{layout}.base")),
                offset(btf, m, &format!("{layout}.size")),
            ) {
                areas.push((b, s));
            }
        }
        if areas.is_empty() {
            let mem = btf.member(m, "mem")?;
            let Type::Array { elem, len } = btf.ty(btf.resolve(mem.type_id)?)?.clone() else {
                return Err(DebugError::NoTypes(
                    "struct module's mem is not an array".into(),
                ));
            };
            let size = btf.size_of(elem)?;
            let base = offset(btf, elem, "base")?;
            let sz = offset(btf, elem, "size")?;
            for i in 0..u64::from(len.min(16)) {
                let at = mem.bit_offset / 8 + i * size;
                areas.push((at + base, at + sz));
            }
        }
        let mk = btf
            .struct_named("mod_kallsyms")
            .ok_or_else(|| DebugError::NoTypes("BTF has no struct mod_kallsyms".into()))?;
        Ok(Self {
            list: offset(btf, m, "list")?,
            name: offset(btf, m, "name")?,
            areas,
            num_orcs: offset(btf, m, "arch.num_orcs").ok(),
            orc_ip: offset(btf, m, "arch.orc_unwind_ip").ok(),
            orc: offset(btf, m, "arch.orc_unwind").ok(),
            kallsyms: offset(btf, m, "kallsyms").ok(),
            symtab: offset(btf, mk, "symtab")?,
            num_symtab: offset(btf, mk, "num_symtab")?,
            strtab: offset(btf, mk, "strtab")?,
        })
    }
}

/// Each module on `modules` ([`crate::modules`] walks the list).
fn read_modules(k: &Kernel, version: OrcVersion) -> Result<Vec<ModuleCode>, DebugError> {
    let btf = k.btf()?;
    let l = ModuleLayout::new(&btf)?;
    crate::modules::module_addrs(k, l.list)?
        .into_iter()
        .map(|at| read_module(k, &l, at, version))
        .collect()
}

fn read_module(
    k: &Kernel,
    l: &ModuleLayout,
    at: u64,
    version: OrcVersion,
) -> Result<ModuleCode, DebugError> {
    let mut name = [0u8; MODULE_NAME_LEN];
    k.read(at + l.name, &mut name)?;
    let name = crate::c_string(&name);
    let mut text = Vec::new();
    for (b, s) in &l.areas {
        let base = k.read_u64(at + b)?;
        let size = u64::from(k.read_u32(at + s)?);
        if base != 0 && size != 0 {
            text.push(base..base.saturating_add(size));
        }
    }
    let orc = match (l.num_orcs, l.orc_ip, l.orc) {
        (Some(n), Some(ip), Some(o)) => {
            let count = u64::from(k.read_u32(at + n)?);
            (count > 0 && count <= MAX_ENTRIES).then_some(OrcTable {
                ip_table: k.read_u64(at + ip)?,
                entries: k.read_u64(at + o)?,
                count,
                version,
            })
        }
        _ => None,
    };
    let (symbols, strtab) = match l.kallsyms {
        Some(ks) => module_symbols(k, l, k.read_u64(at + ks)?, &text).unwrap_or_default(),
        None => Default::default(),
    };
    Ok(ModuleCode {
        name,
        text,
        orc,
        symbols,
        strtab,
    })
}

/// A module's function symbols inside its text, sorted, and its string table.
fn module_symbols(
    k: &Kernel,
    l: &ModuleLayout,
    kallsyms: u64,
    text: &[Range<u64>],
) -> Result<(Vec<ModuleSymbol>, u64), DebugError> {
    let symtab = k.read_u64(kallsyms + l.symtab)?;
    let n = u64::from(k.read_u32(kallsyms + l.num_symtab)?);
    let strtab = k.read_u64(kallsyms + l.strtab)?;
    if n > MAX_MODULE_SYMBOLS {
        return Err(DebugError::Inconsistent(format!(
            "a module claims {n} symbols"
        )));
    }
    let mut raw = vec![0u8; (n * ELF_SYM_SIZE) as usize];
    k.read(symtab, &mut raw)?;
    let mut out: Vec<ModuleSymbol> = raw
        .chunks_exact(ELF_SYM_SIZE as usize)
        .filter_map(|e| {
            let name = u64::from(u32::from_le_bytes(e[0..4].try_into().ok()?));
            let kind = e[4] & 0xf; // STT_NOTYPE 0, STT_FUNC 2
            let value = u64::from_le_bytes(e[8..16].try_into().ok()?);
            let size = u64::from_le_bytes(e[16..24].try_into().ok()?);
            ((kind == 0 || kind == 2) && name != 0 && text.iter().any(|r| r.contains(&value)))
                .then_some(ModuleSymbol {
                    addr: value,
                    size,
                    name,
                })
        })
        .collect();
    out.sort_unstable();
    Ok((out, strtab))
}

/// Offsets for a task's saved state.
struct TaskLayout {
    thread_sp: u64,
    on_cpu: Option<u64>,
    frame_bp: u64,
    frame_ret: u64,
    frame_size: u64,
}

impl TaskLayout {
    fn new(btf: &Btf) -> Result<Self, DebugError> {
        let t = btf
            .struct_named("task_struct")
            .ok_or_else(|| DebugError::NoTypes("BTF has no struct task_struct".into()))?;
        let f = btf
            .struct_named("inactive_task_frame")
            .ok_or_else(|| DebugError::NoTypes("BTF has no struct inactive_task_frame".into()))?;
        Ok(Self {
            thread_sp: offset(btf, t, "thread.sp")?,
            on_cpu: offset(btf, t, "on_cpu").ok(),
            frame_bp: offset(btf, f, "bp")?,
            frame_ret: offset(btf, f, "ret_addr")?,
            frame_size: btf.size_of(f)?,
        })
    }
}

/// The trace of CPU `cpu` from its registers `regs` (the guest should be paused).
pub fn backtrace_cpu(k: &Kernel, cpu: u32, regs: &Registers) -> Result<Backtrace, DebugError> {
    let (pid, comm) = match current_task(k, cpu) {
        Ok(t) => (Some(t.pid), Some(t.comm)),
        Err(_) => (None, None),
    };
    let code = KernelCode::new(k)?;
    let (frames, end) = unwind(
        k,
        &code,
        Start {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            signal: true,
            regs: Some(*regs),
        },
    );
    Ok(Backtrace {
        pid,
        comm,
        cpu: Some(cpu),
        source: format!("vCPU {cpu}'s registers"),
        frames,
        end,
    })
}

/// The trace of task `pid`: from what the scheduler saved when it switched away, or,
/// when the task is on a CPU, from that vCPU's registers (`cpus[n]` for CPU n; empty
/// when they are not to be had, which is then an error for a running task).
pub fn backtrace_task(k: &Kernel, pid: i32, cpus: &[Registers]) -> Result<Backtrace, DebugError> {
    let btf = k.btf()?;
    let l = TaskLayout::new(&btf)?;
    let list = list_tasks(k)?;
    let task = list.tasks.iter().find(|t| t.pid == pid).ok_or_else(|| {
        DebugError::NoTask(match &list.torn {
            Some(why) => {
                format!("no task with pid {pid} among those walked (the walk stopped early: {why})")
            }
            None => format!("no task with pid {pid} (`vesper debug ps` lists them)"),
        })
    })?;
    let cpu = task.cpu.unwrap_or(0);
    let running = match current_task(k, cpu) {
        Ok(current) => current.addr == task.addr,
        Err(_) => match l.on_cpu {
            Some(o) => k.read_u32(task.addr + o)? != 0,
            None => false,
        },
    };
    if running {
        let regs = cpus.get(cpu as usize).ok_or_else(|| {
            DebugError::NoTask(format!(
                "pid {pid} ({}) is running on CPU {cpu}; its trace needs that vCPU's registers, which this source lacks",
                task.comm
            ))
        })?;
        let mut bt = backtrace_cpu(k, cpu, regs)?;
        bt.pid = Some(pid);
        bt.comm = Some(task.comm.clone());
        bt.source = format!("running on CPU {cpu}: vCPU {cpu}'s registers");
        return Ok(bt);
    }
    let sp = k.read_u64(task.addr + l.thread_sp)?;
    let ret = k.read_u64(sp + l.frame_ret)?;
    let bp = k.read_u64(sp + l.frame_bp)?;
    let fork = k.symbols().lookup("ret_from_fork").map(|s| s.addr);
    let code = KernelCode::new(k)?;
    let (frames, end) = unwind(
        k,
        &code,
        Start {
            ip: ret,
            sp: sp + l.frame_size,
            bp,
            signal: Some(ret) == fork,
            regs: None,
        },
    );
    Ok(Backtrace {
        pid: Some(pid),
        comm: Some(task.comm.clone()),
        cpu: task.cpu,
        source: "what the scheduler saved when it switched away".into(),
        frames,
        end,
    })
}
