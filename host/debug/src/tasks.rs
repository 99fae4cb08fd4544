//! The task list, walked from `init_task` with offsets from BTF: what `ps` shows. The
//! guest may rewrite the list while we walk it (a running guest forks and reaps), so
//! the walk is bounded, checks each link's way back, and reports where it tore instead
//! of looping or inventing tasks.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::btf::{Btf, TypeId};
use crate::error::DebugError;
use crate::kernel::Kernel;
use crate::memory::KernelMemory;

/// Most tasks walked before the list is called broken.
pub const MAX_TASKS: usize = 1 << 16;
const COMM_LEN: usize = 16;

/// One task as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Address of its `task_struct`.
    pub addr: u64,
    /// Thread id (`pid`).
    pub pid: i32,
    /// Process id (`tgid`).
    pub tgid: i32,
    /// The parent's `tgid` (0 when unreadable).
    pub ppid: i32,
    /// State letter as `ps` prints it: R, S, D, T, t, X, Z, P, I.
    pub state: char,
    /// The CPU it last ran on.
    pub cpu: Option<u32>,
    /// Command name.
    pub comm: String,
    /// A kernel thread (no `mm`).
    pub kernel_thread: bool,
}

/// The walk's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskList {
    /// Tasks in list order, `init_task` (the idle task, pid 0) first.
    pub tasks: Vec<Task>,
    /// Where and why the walk stopped early, if it did.
    pub torn: Option<String>,
}

/// Offsets into `task_struct`, from BTF.
struct Layout {
    tasks: u64,
    pid: u64,
    tgid: u64,
    comm: u64,
    state: u64,
    exit_state: Option<u64>,
    cpu: Option<u64>,
    mm: Option<u64>,
    real_parent: Option<u64>,
}

/// The byte offset of the member path `path` ("a.b.c") in `ty`.
pub(crate) fn offset(btf: &Btf, ty: TypeId, path: &str) -> Result<u64, DebugError> {
    let mut id = ty;
    let mut off = 0u64;
    for name in path.split('.') {
        let m = btf.member(id, name)?;
        off += m.bit_offset / 8;
        id = m.type_id;
    }
    Ok(off)
}

impl Layout {
    fn new(btf: &Btf) -> Result<Self, DebugError> {
        let t = btf
            .struct_named("task_struct")
            .ok_or_else(|| DebugError::NoTypes("BTF has no struct task_struct".into()))?;
        let state = offset(btf, t, "__state").or_else(|_| offset(btf, t, "state"))?;
        Ok(Self {
            tasks: offset(btf, t, "tasks")?,
            pid: offset(btf, t, "pid")?,
            tgid: offset(btf, t, "tgid")?,
            comm: offset(btf, t, "comm")?,
            state,
            exit_state: offset(btf, t, "exit_state").ok(),
            // 5.16+ keeps it in thread_info when THREAD_INFO_IN_TASK; older in the task.
            cpu: offset(btf, t, "thread_info.cpu")
                .or_else(|_| offset(btf, t, "cpu"))
                .ok(),
            mm: offset(btf, t, "mm").ok(),
            real_parent: offset(btf, t, "real_parent").ok(),
        })
    }
}

/// The state letter, as fs/proc/array.c's `task_state_index` computes it.
pub fn state_letter(state: u32, exit_state: u32) -> char {
    const TASK_REPORT: u32 = 0x7f;
    const TASK_IDLE: u32 = 0x2 | 0x400; // UNINTERRUPTIBLE | NOLOAD
    if state == TASK_IDLE {
        return 'I';
    }
    let s = (state | exit_state) & TASK_REPORT;
    const LETTERS: [char; 8] = ['R', 'S', 'D', 'T', 't', 'X', 'Z', 'P'];
    let index = (u32::BITS - s.leading_zeros()) as usize; // fls
    LETTERS.get(index).copied().unwrap_or('?')
}

fn read_i32(k: &dyn KernelMemory, addr: u64) -> Result<i32, DebugError> {
    Ok(k.read_u32(addr)? as i32)
}

fn read_task(k: &dyn KernelMemory, l: &Layout, addr: u64) -> Result<Task, DebugError> {
    let mut comm = [0u8; COMM_LEN];
    k.read(addr + l.comm, &mut comm)?;
    let state = k.read_u32(addr + l.state)?;
    let exit_state = match l.exit_state {
        Some(o) => k.read_u32(addr + o)?,
        None => 0,
    };
    let ppid = match l.real_parent {
        Some(o) => k
            .read_u64(addr + o)
            .ok()
            .and_then(|p| read_i32(k, p + l.tgid).ok())
            .unwrap_or(0),
        None => 0,
    };
    Ok(Task {
        addr,
        pid: read_i32(k, addr + l.pid)?,
        tgid: read_i32(k, addr + l.tgid)?,
        ppid,
        state: state_letter(state, exit_state),
        cpu: match l.cpu {
            Some(o) => Some(k.read_u32(addr + o)?),
            None => None,
        },
        comm: crate::c_string(&comm),
        kernel_thread: match l.mm {
            Some(o) => k.read_u64(addr + o)? == 0,
            None => false,
        },
    })
}

/// Walks the task list from `init_task`.
pub fn list_tasks(k: &Kernel) -> Result<TaskList, DebugError> {
    list_tasks_in(k, k)
}

/// The same walk with every read of the list and the tasks through `mem` (symbols and
/// types from `k`): how a benchmark runs the identical walk over another transport,
/// e.g. a gdbstub.
pub fn list_tasks_in(k: &Kernel, mem: &dyn KernelMemory) -> Result<TaskList, DebugError> {
    let btf = k.btf()?;
    let l = Layout::new(&btf)?;
    let init = k.symbol("init_task")?.addr;
    let head = init + l.tasks;
    let mut tasks = vec![read_task(mem, &l, init)?];
    let mut seen = HashSet::from([head]);
    let mut prev = head;
    let mut node = mem.read_u64(head)?;
    let torn = loop {
        if node == head {
            break None;
        }
        if tasks.len() >= MAX_TASKS {
            break Some(format!("stopped after {MAX_TASKS} tasks"));
        }
        if !seen.insert(node) {
            break Some(format!(
                "the list loops at {node:#x} without returning to init_task"
            ));
        }
        // A node whose way back is not where we came from was unlinked or reused
        // while we walked: stop there rather than follow it anywhere.
        let (next, back) = match (mem.read_u64(node), mem.read_u64(node + 8)) {
            (Ok(n), Ok(b)) => (n, b),
            (Err(e), _) | (_, Err(e)) => {
                break Some(format!("list entry {node:#x} is unreadable: {e}"))
            }
        };
        if back != prev {
            break Some(format!(
                "list entry {node:#x} points back to {back:#x}, not {prev:#x}: the list changed during the walk"
            ));
        }
        match read_task(mem, &l, node - l.tasks) {
            Ok(t) => tasks.push(t),
            Err(e) => break Some(format!("task at {:#x} is unreadable: {e}", node - l.tasks)),
        }
        prev = node;
        node = next;
    };
    Ok(TaskList { tasks, torn })
}

/// The task running on `cpu` now: its per-CPU `current_task` (in `pcpu_hot` since
/// 6.2), read at `__per_cpu_offset[cpu]`. What a dump's `NT_PRSTATUS` names as
/// `pr_pid`, as kdump does: drgn uses a CPU's registers for a task only when the pids
/// agree.
pub fn current_task(k: &Kernel, cpu: u32) -> Result<Task, DebugError> {
    let btf = k.btf()?;
    let l = Layout::new(&btf)?;
    let cpus = k.read_u32(k.symbol("nr_cpu_ids")?.addr)?;
    if cpu >= cpus {
        return Err(DebugError::Inconsistent(format!(
            "CPU {cpu} asked for; the kernel has {cpus} (nr_cpu_ids)"
        )));
    }
    // Per-CPU symbols are offsets into each CPU's area.
    let var = match k.symbol("current_task") {
        Ok(s) => s.addr,
        Err(_) => {
            let hot = btf
                .struct_named("pcpu_hot")
                .ok_or_else(|| DebugError::NoTypes("neither current_task nor pcpu_hot".into()))?;
            k.symbol("pcpu_hot")?.addr + offset(&btf, hot, "current_task")?
        }
    };
    let area = k.read_u64(k.symbol("__per_cpu_offset")?.addr + 8 * u64::from(cpu))?;
    let task = k.read_u64(area.wrapping_add(var))?;
    read_task(k, &l, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letters_follow_proc() {
        assert_eq!(state_letter(0, 0), 'R');
        assert_eq!(state_letter(1, 0), 'S');
        assert_eq!(state_letter(2, 0), 'D');
        assert_eq!(state_letter(4, 0), 'T');
        assert_eq!(state_letter(8, 0), 't');
        assert_eq!(state_letter(0, 16), 'X');
        assert_eq!(state_letter(0, 32), 'Z');
        assert_eq!(state_letter(64, 0), 'P');
        assert_eq!(state_letter(0x402, 0), 'I');
        // TASK_WAKEKILL etc. are not reported.
        assert_eq!(state_letter(0x100 | 1, 0), 'S');
    }
}
