//! The guest kernel's loaded modules: the `modules` list `lsmod` reads, walked in
//! guest memory (bounded, each link's way back checked, as the task walk does).

use std::collections::HashSet;

use crate::error::DebugError;
use crate::kernel::Kernel;
use crate::memory::KernelMemory;
use crate::tasks::offset;

/// Most modules walked.
const MAX_MODULES: usize = 4096;
/// `MODULE_NAME_LEN` on 64-bit.
pub(crate) const MODULE_NAME_LEN: usize = 56;

/// `enum module_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// `MODULE_STATE_LIVE`: loaded, its init returned 0.
    Live,
    /// `MODULE_STATE_COMING`: its init runs.
    Coming,
    /// `MODULE_STATE_GOING`: being unloaded (or its init failed).
    Going,
    /// `MODULE_STATE_UNFORMED`: still being set up by the loader.
    Unformed,
    /// A value the kernel does not define.
    Other(u32),
}

impl ModuleState {
    fn of(raw: u32) -> Self {
        match raw {
            0 => Self::Live,
            1 => Self::Coming,
            2 => Self::Going,
            3 => Self::Unformed,
            n => Self::Other(n),
        }
    }
}

impl std::fmt::Display for ModuleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Live => f.write_str("live"),
            Self::Coming => f.write_str("coming"),
            Self::Going => f.write_str("going"),
            Self::Unformed => f.write_str("unformed"),
            Self::Other(n) => write!(f, "state {n}"),
        }
    }
}

/// One module on the kernel's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ModuleState,
    /// Address of its `struct module`.
    pub addr: u64,
}

/// The addresses of the `struct module`s on `modules`, in list order; `list` is the
/// offset of `list` in `struct module`.
pub(crate) fn module_addrs(k: &Kernel, list: u64) -> Result<Vec<u64>, DebugError> {
    let head = k.symbol("modules")?.addr;
    let mut out = Vec::new();
    let mut seen = HashSet::from([head]);
    let (mut prev, mut node) = (head, k.read_u64(head)?);
    while node != head {
        if out.len() >= MAX_MODULES || !seen.insert(node) || k.read_u64(node + 8)? != prev {
            return Err(DebugError::Inconsistent(format!(
                "the module list is broken at {node:#x} (it changed under the walk, or loops)"
            )));
        }
        out.push(node.wrapping_sub(list));
        prev = node;
        node = k.read_u64(node)?;
    }
    Ok(out)
}

/// Every module the kernel has loaded (or is loading), as `lsmod` lists them.
pub fn loaded_modules(k: &Kernel) -> Result<Vec<LoadedModule>, DebugError> {
    let btf = k.btf()?;
    let m = btf
        .struct_named("module")
        .ok_or_else(|| DebugError::NoTypes("BTF has no struct module".into()))?;
    let (list, name_at, state_at) = (
        offset(&btf, m, "list")?,
        offset(&btf, m, "name")?,
        offset(&btf, m, "state")?,
    );
    module_addrs(k, list)?
        .into_iter()
        .map(|addr| {
            let mut name = [0u8; MODULE_NAME_LEN];
            k.read(addr + name_at, &mut name)?;
            Ok(LoadedModule {
                name: crate::c_string(&name),
                state: ModuleState::of(k.read_u32(addr + state_at)?),
                addr,
            })
        })
        .collect()
}
