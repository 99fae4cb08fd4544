//! What a spec is checked and built against: one guest kernel's files (headers, the
//! vmlinux with its BTF and symbols, the frontend module whose exports probes link to),
//! found in the guest kit, and the facts read from them.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use goblin::elf::{
    section_header::SHT_NOBITS,
    sym::{STT_FUNC, STT_OBJECT},
    Elf,
};
use vesper_debug::btf::{Btf, Type, TypeId};

use crate::error::{io, SpecError};

/// The files of one guest kernel a probe is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// `uname -r` of the guest.
    pub release: String,
    /// Its kbuild tree (`/lib/modules/RELEASE/build`).
    pub kdir: PathBuf,
    /// Its vmlinux (BTF and symbols; the kit keeps Debian's `-dbg` one).
    pub vmlinux: PathBuf,
    /// The `vesper_front.ko` built for it: its export CRCs go to modpost.
    pub front: PathBuf,
    /// The kit's lock file: held shared while the frontend is read, so a kit being
    /// rebuilt at that moment is waited for rather than found half empty.
    pub kit_lock: Option<PathBuf>,
}

fn kernel_err(release: &str, message: impl Into<String>) -> SpecError {
    SpecError::Kernel {
        release: release.to_string(),
        message: message.into(),
    }
}

impl KernelFiles {
    /// The kit's files for `release` (the kit's own kernel when `None`), read from
    /// `KIT/manifest.json`; each missing file is named with what to do.
    pub fn from_kit(kit: &Path, release: Option<&str>) -> Result<KernelFiles, SpecError> {
        let manifest_path = kit.join("manifest.json");
        let text = fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
        let m: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            kernel_err(
                release.unwrap_or("?"),
                format!(
                    "{}: {e}; rebuild the kit (cargo run -p vesper-guest-kit)",
                    manifest_path.display()
                ),
            )
        })?;
        let kit_release = m["release"].as_str().unwrap_or_default();
        let release = release.unwrap_or(kit_release).to_string();
        let files = if release == kit_release {
            KernelFiles {
                kdir: m["kdir"].as_str().map(PathBuf::from).unwrap_or_default(),
                vmlinux: m["debug_vmlinux"]
                    .as_str()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| kit.join("kernel").join(&release).join("vmlinux")),
                front: m["modules"]["vesper_front"]
                    .as_str()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
                kit_lock: Some(kit.join(".lock")),
                release,
            }
        } else {
            KernelFiles {
                kdir: PathBuf::from(format!("/lib/modules/{release}/build")),
                vmlinux: kit.join("kernel").join(&release).join("vmlinux"),
                front: kit.join("modules").join(&release).join("vesper_front.ko"),
                kit_lock: Some(kit.join(".lock")),
                release,
            }
        };
        for (what, p, fix) in [
            (
                "kernel headers",
                &files.kdir,
                "install linux-headers-RELEASE",
            ),
            (
                "vmlinux (BTF and symbols)",
                &files.vmlinux,
                "the kit fetches it from linux-image-RELEASE-dbg",
            ),
        ] {
            if !p.exists() {
                return Err(kernel_err(
                    &files.release,
                    format!("no {what} at {} ({fix})", p.display()),
                ));
            }
        }
        Ok(files)
    }
}

/// Facts about one guest kernel: its types and what can be probed.
pub struct KernelInfo {
    /// `uname -r`.
    pub release: String,
    /// Its BTF.
    pub btf: Btf,
    /// Function symbols (the kprobe-able candidates).
    pub functions: BTreeSet<String>,
    /// Function name → its BTF `Func` (for argument and return types).
    pub func_types: HashMap<String, TypeId>,
    /// Tracepoint event → its system (`sched_process_exit` → `sched`), read from the
    /// kernel's own event descriptions; empty when they could not be read (then the
    /// system a spec names is not checked).
    pub tracepoint_systems: HashMap<String, String>,
}

impl KernelInfo {
    /// Builds from parts (tests use a hand-made BTF).
    pub fn new(release: &str, btf: Btf, functions: BTreeSet<String>) -> KernelInfo {
        let mut func_types = HashMap::new();
        for id in 1..btf.len() as TypeId {
            if let Ok(Type::Func { name, .. }) = btf.ty(id) {
                func_types.entry(name.clone()).or_insert(id);
            }
        }
        KernelInfo {
            release: release.to_string(),
            btf,
            functions,
            func_types,
            tracepoint_systems: HashMap::new(),
        }
    }

    /// Reads the `.BTF` section and the function symbols of `files.vmlinux`.
    pub fn load(files: &KernelFiles) -> Result<KernelInfo, SpecError> {
        let t = Instant::now();
        let file = fs::File::open(&files.vmlinux).map_err(io(&files.vmlinux))?;
        // SAFETY: the mapping is read-only and private; the kit's vmlinux is not
        // rewritten while we read it (the kit renames a new one into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&files.vmlinux))?;
        let bad = |why: String| {
            kernel_err(
                &files.release,
                format!("{}: {why}", files.vmlinux.display()),
            )
        };
        let elf = Elf::parse(&map).map_err(|e| bad(format!("not a readable ELF: {e}")))?;
        let btf_bytes = elf
            .section_headers
            .iter()
            .find(|sh| {
                elf.shdr_strtab.get_at(sh.sh_name) == Some(".BTF") && sh.sh_type != SHT_NOBITS
            })
            .and_then(|sh| {
                let start = usize::try_from(sh.sh_offset).ok()?;
                map.get(start..start.checked_add(usize::try_from(sh.sh_size).ok()?)?)
            })
            .ok_or_else(|| {
                bad("no .BTF section (a kernel built without CONFIG_DEBUG_INFO_BTF)".into())
            })?;
        let btf = Btf::parse(btf_bytes).map_err(|e| bad(format!("its BTF: {e}")))?;
        let functions: BTreeSet<String> = elf
            .syms
            .iter()
            .filter(|s| s.st_type() == STT_FUNC)
            .filter_map(|s| elf.strtab.get_at(s.st_name))
            .map(str::to_string)
            .collect();
        if functions.is_empty() {
            return Err(bad("no function symbols (a stripped vmlinux?)".into()));
        }
        let mut k = KernelInfo::new(&files.release, btf, functions);
        k.tracepoint_systems = tracepoint_systems(&elf, &map, &k.btf).unwrap_or_else(|why| {
            tracing::warn!(release = %files.release, "tracepoint systems not read, so not checked: {why}");
            HashMap::new()
        });
        tracing::debug!(
            release = %files.release,
            functions = k.functions.len(),
            types = k.btf.len(),
            tracepoints = k.tracepoint_systems.len(),
            ms = t.elapsed().as_millis() as u64,
            "kernel facts loaded"
        );
        Ok(k)
    }

    /// The system of tracepoint `event`, when known.
    pub fn tracepoint_system(&self, event: &str) -> Option<&str> {
        self.tracepoint_systems.get(event).map(String::as_str)
    }

    /// Up to five known names close to `name` (shared prefix, then edit distance).
    pub fn near(&self, name: &str, names: impl Iterator<Item = String>) -> String {
        let mut scored: Vec<(usize, String)> = names
            .filter(|n| n.len().abs_diff(name.len()) <= 3)
            .map(|n| (edit_distance(name, &n), n))
            .filter(|(d, _)| *d <= 2.max(name.len() / 4))
            .collect();
        scored.sort();
        scored.truncate(5);
        if scored.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = scored.into_iter().map(|(_, n)| format!("`{n}`")).collect();
            format!(" (did you mean {}?)", names.join(", "))
        }
    }
}

/// Every trace event's system, from the kernel image: each event is a `struct
/// trace_event_call` named `event_EVENT`, whose `class` points to a `struct
/// trace_event_class` whose `system` points to the system's name. Offsets come from
/// the kernel's BTF; pointers are the image's link-time addresses, found through its
/// loadable segments. Every read is bounds-checked: a name not found is left out.
fn tracepoint_systems(
    elf: &Elf,
    image: &[u8],
    btf: &Btf,
) -> Result<HashMap<String, String>, String> {
    let offset_of = |st: &str, member: &str| -> Result<u64, String> {
        let id = btf
            .struct_named(st)
            .ok_or(format!("no struct {st} in BTF"))?;
        let m = btf.member(id, member).map_err(|e| e.to_string())?;
        Ok(m.bit_offset / 8)
    };
    if !elf.is_64 || !elf.little_endian {
        return Err("not a 64-bit little-endian image".into());
    }
    let call_id = btf
        .struct_named("trace_event_call")
        .ok_or("no struct trace_event_call in BTF")?;
    let call_size = btf.size_of(call_id).map_err(|e| e.to_string())?;
    let class_at = btf
        .member(call_id, "class")
        .map_err(|e| e.to_string())?
        .bit_offset
        / 8;
    let system_at = offset_of("trace_event_class", "system")?;
    let bytes_at = |addr: u64, len: u64| -> Option<&[u8]> {
        let end = addr.checked_add(len)?;
        let ph = elf.program_headers.iter().find(|ph| {
            ph.p_type == goblin::elf::program_header::PT_LOAD
                && addr >= ph.p_vaddr
                && ph
                    .p_vaddr
                    .checked_add(ph.p_filesz)
                    .is_some_and(|seg_end| end <= seg_end)
        })?;
        let start = usize::try_from(ph.p_offset.checked_add(addr - ph.p_vaddr)?).ok()?;
        image.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    };
    let pointer_at = |addr: u64| -> Option<u64> {
        Some(u64::from_le_bytes(bytes_at(addr, 8)?.try_into().ok()?))
    };
    let name_at = |addr: u64| -> Option<String> {
        // A system name is a C identifier; 64 bytes is plenty.
        let b = (8..=64u64).rev().find_map(|n| bytes_at(addr, n))?;
        let end = b.iter().position(|&c| c == 0)?;
        let name = std::str::from_utf8(&b[..end]).ok()?;
        (!name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
            .then(|| name.to_string())
    };
    let mut systems = HashMap::new();
    // A trace event's descriptor, not another `event_*` object (perf's `event_attr_*`).
    let descriptors = elf
        .syms
        .iter()
        .filter(|s| s.st_type() == STT_OBJECT && s.st_size == call_size);
    for sym in descriptors {
        let Some(event) = elf
            .strtab
            .get_at(sym.st_name)
            .and_then(|n| n.strip_prefix("event_"))
            .filter(|e| !e.starts_with("class_"))
        else {
            continue;
        };
        let system = sym
            .st_value
            .checked_add(class_at)
            .and_then(pointer_at)
            .and_then(|class| pointer_at(class.checked_add(system_at)?))
            .and_then(name_at);
        if let Some(system) = system {
            systems.insert(event.to_string(), system);
        }
    }
    if systems.is_empty() {
        return Err("no `event_*` trace event found in the image's symbols".into());
    }
    Ok(systems)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A `Module.symvers` for the frontend's exports, with the CRCs of the very
/// `vesper_front.ko` the guest runs (its `__crc_*` symbols), so modversions agree.
pub fn front_symvers(front: &Path) -> Result<String, SpecError> {
    let bytes = fs::read(front).map_err(|e| SpecError::Kernel {
        release: "?".into(),
        message: format!(
            "cannot read the frontend module {} ({e}): build the kit for this kernel",
            front.display()
        ),
    })?;
    let bad = |why: String| SpecError::Kernel {
        release: "?".into(),
        message: format!("{}: {why}", front.display()),
    };
    let elf = Elf::parse(&bytes).map_err(|e| bad(format!("not a readable module: {e}")))?;
    let mut out = String::new();
    for s in elf.syms.iter() {
        let Some(name) = elf.strtab.get_at(s.st_name) else {
            continue;
        };
        let Some(export) = name.strip_prefix("__crc_") else {
            continue;
        };
        let sh = elf
            .section_headers
            .get(s.st_shndx)
            .ok_or_else(|| bad(format!("{name} in no section")))?;
        let at = sh.sh_offset.saturating_add(s.st_value) as usize;
        let crc = bytes
            .get(at..at.saturating_add(4))
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad(format!("{name} outside the file")))?;
        out.push_str(&format!(
            "{crc:#010x}\t{export}\tvesper_front\tEXPORT_SYMBOL_GPL\t\n"
        ));
    }
    if out.is_empty() {
        return Err(bad(
            "exports no CRCs (__crc_*): not a vesper_front.ko built with modversions".into(),
        ));
    }
    Ok(out)
}
