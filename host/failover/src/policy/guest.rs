//! One `[[guest]]` of a policy, checked: its name, the machine it is (from its own keys,
//! or from the VM definition file its `definition` names, read and checked here), its
//! probes, dump setting and probe group.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use vesper_toml_located::{Locator, TomlFileError};

use super::types::{
    DefinitionRef, GuestSpec, HostCapacity, ProbeGroupRef, ProbeSpec, DEFAULT_MODE,
};
use crate::error::{Location, PolicyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuest {
    name: Spanned<String>,
    memory_mib: Option<Spanned<u32>>,
    cpus: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    vmm: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    dump: Option<Spanned<toml::Value>>,
    #[serde(default)]
    probes: Vec<RawProbe>,
    probe_group: Option<Spanned<String>>,
    definition: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    module: Spanned<String>,
    #[serde(default)]
    params: Vec<String>,
}

/// The keys that say what machine a kit test guest is; a definition file holds them
/// instead.
struct MachineKeys {
    memory_mib: Option<Spanned<u32>>,
    cpus: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    vmm: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
}

/// The machine a guest is, however it was declared.
struct Machine {
    memory_mib: u32,
    cpus: u32,
    mode: String,
    vmm: String,
    kernel: Option<String>,
    definition: Option<DefinitionRef>,
}

/// Every `[[guest]]`, in file order: each checked, none declared twice, each fitting
/// this host.
pub(super) fn guests(
    loc: &Locator,
    raw: Vec<Spanned<RawGuest>>,
    capacity: HostCapacity,
) -> Result<Vec<GuestSpec>, PolicyError> {
    let mut guests: Vec<GuestSpec> = Vec::with_capacity(raw.len());
    for g in raw {
        let spec = guest(loc, g, &guests, capacity)?;
        guests.push(spec);
    }
    Ok(guests)
}

/// One `[[guest]]`; `earlier` are the guests before it.
fn guest(
    loc: &Locator,
    raw: Spanned<RawGuest>,
    earlier: &[GuestSpec],
    capacity: HostCapacity,
) -> Result<GuestSpec, PolicyError> {
    let table_at = loc.of(&raw);
    let RawGuest {
        name,
        memory_mib,
        cpus,
        mode,
        vmm,
        kernel,
        dump,
        probes,
        probe_group,
        definition,
    } = raw.into_inner();
    let at = loc.of(&name);
    let name = name.into_inner();
    if name.trim().is_empty() {
        return Err(PolicyError::EmptyName { at, what: "guest" });
    }
    if earlier.iter().any(|o| o.name == name) {
        return Err(PolicyError::DuplicateGuest { at, guest: name });
    }
    let keys = MachineKeys {
        memory_mib,
        cpus,
        mode,
        vmm,
        kernel,
    };
    let machine = match definition {
        Some(d) => from_definition(loc, &name, d, &keys, capacity)?,
        None => from_keys(loc, &name, keys, table_at, capacity)?,
    };
    let probes = self::probes(loc, probes)?;
    let dump = match dump {
        Some(v) => Some(boolean(loc, v, format!("guest {name:?}"))?),
        None => None,
    };
    let probe_group = match probe_group {
        Some(p) if p.get_ref().trim().is_empty() => {
            return Err(PolicyError::EmptyName {
                at: loc.of(&p),
                what: "probe group",
            })
        }
        // Relative to the policy file, as a group's members are to the group file.
        Some(p) => Some(ProbeGroupRef {
            at: loc.of(&p),
            path: beside_policy(loc, p.get_ref()),
        }),
        None => None,
    };
    Ok(GuestSpec {
        name,
        memory_mib: machine.memory_mib,
        cpus: machine.cpus,
        mode: machine.mode,
        vmm: machine.vmm,
        kernel: machine.kernel,
        definition: machine.definition,
        dump,
        probes,
        probe_group,
    })
}

/// `path` as the policy file names it: relative to the policy file's directory.
fn beside_policy(loc: &Locator, path: &str) -> PathBuf {
    loc.file
        .and_then(Path::parent)
        .unwrap_or(Path::new(""))
        .join(path)
}

/// A kit test guest declared by its own keys (`memory_mib` required).
fn from_keys(
    loc: &Locator,
    name: &str,
    keys: MachineKeys,
    table_at: Location,
    capacity: HostCapacity,
) -> Result<Machine, PolicyError> {
    let Some(memory) = keys.memory_mib else {
        return Err(TomlFileError::MissingKey {
            at: table_at,
            key: "memory_mib".into(),
        }
        .into());
    };
    let memory_at = loc.of(&memory);
    let memory_mib = memory.into_inner();
    if memory_mib == 0 {
        return Err(PolicyError::ZeroGuestSize {
            at: memory_at,
            guest: name.into(),
            key: "memory_mib",
        });
    }
    fits(name, memory_mib, memory_at, capacity)?;
    let cpus = match keys.cpus {
        Some(c) if *c.get_ref() == 0 => {
            return Err(PolicyError::ZeroGuestSize {
                at: loc.of(&c),
                guest: name.into(),
                key: "cpus",
            })
        }
        Some(c) => c.into_inner(),
        None => 1,
    };
    let mode = match keys.mode {
        Some(m) if m.get_ref().trim().is_empty() => {
            return Err(PolicyError::EmptyName {
                at: loc.of(&m),
                what: "guest mode",
            })
        }
        Some(m) => m.into_inner(),
        None => DEFAULT_MODE.to_string(),
    };
    let vmm = match keys.vmm {
        Some(v) if !matches!(v.get_ref().as_str(), "qemu" | "builtin") => {
            return Err(PolicyError::UnknownVmm {
                at: loc.of(&v),
                guest: name.into(),
                found: v.into_inner(),
            })
        }
        Some(v) => v.into_inner(),
        None => "qemu".to_string(),
    };
    let kernel = match keys.kernel {
        Some(k) if k.get_ref().trim().is_empty() => {
            return Err(PolicyError::EmptyName {
                at: loc.of(&k),
                what: "guest kernel",
            })
        }
        other => other.map(Spanned::into_inner),
    };
    Ok(Machine {
        memory_mib,
        cpus,
        mode,
        vmm,
        kernel,
        definition: None,
    })
}

/// A guest declared by a VM definition file: read, checked as VM `name`, every file it
/// names there, and its memory fitting this host.
fn from_definition(
    loc: &Locator,
    name: &str,
    definition: Spanned<String>,
    keys: &MachineKeys,
    capacity: HostCapacity,
) -> Result<Machine, PolicyError> {
    let at = loc.of(&definition);
    if definition.get_ref().trim().is_empty() {
        return Err(PolicyError::EmptyName {
            at,
            what: "VM definition file",
        });
    }
    let path = beside_policy(loc, definition.get_ref());
    // vesperd reads it again at each start, whatever its working directory by then.
    let path = std::path::absolute(&path).unwrap_or(path);
    let beside = [
        ("memory_mib", keys.memory_mib.as_ref().map(|k| loc.of(k))),
        ("cpus", keys.cpus.as_ref().map(|k| loc.of(k))),
        ("mode", keys.mode.as_ref().map(|k| loc.of(k))),
        ("vmm", keys.vmm.as_ref().map(|k| loc.of(k))),
        ("kernel", keys.kernel.as_ref().map(|k| loc.of(k))),
    ];
    if let Some((key, Some(key_at))) = beside.into_iter().find(|(_, a)| a.is_some()) {
        return Err(PolicyError::KeyBesideDefinition {
            at: key_at,
            guest: name.into(),
            key,
            definition: path,
        });
    }
    let bad = |source| PolicyError::BadDefinition {
        at: at.clone(),
        guest: name.into(),
        path: path.clone(),
        source: Box::new(source),
    };
    let vm = vesper_vmdef::from_toml_file(&path).map_err(bad)?;
    vm.check(name).map_err(bad)?;
    vm.check_files().map_err(bad)?;
    fits(name, vm.memory_mib, at.clone(), capacity)?;
    Ok(Machine {
        memory_mib: vm.memory_mib,
        cpus: vm.cpus,
        mode: vm.boot.mode.unwrap_or_else(|| DEFAULT_MODE.to_string()),
        vmm: vm.vmm.to_string(),
        kernel: vm.boot.kernel,
        definition: Some(DefinitionRef { path, at }),
    })
}

/// A guest larger than the host could never run here.
fn fits(
    name: &str,
    memory_mib: u32,
    at: Location,
    capacity: HostCapacity,
) -> Result<(), PolicyError> {
    if u64::from(memory_mib) > capacity.max_memory_mib {
        return Err(PolicyError::GuestTooBig {
            at,
            guest: name.into(),
            memory_mib,
            max_memory_mib: capacity.max_memory_mib,
        });
    }
    Ok(())
}

fn probes(loc: &Locator, raw: Vec<RawProbe>) -> Result<Vec<ProbeSpec>, PolicyError> {
    let mut probes = Vec::with_capacity(raw.len());
    for p in raw {
        if p.module.get_ref().trim().is_empty() {
            return Err(PolicyError::EmptyName {
                at: loc.of(&p.module),
                what: "probe module",
            });
        }
        probes.push(ProbeSpec {
            module: p.module.into_inner(),
            params: p.params,
        });
    }
    Ok(probes)
}

/// A `dump` value (a guest's, or `[dump] on_panic`): true or false, anything else its
/// own error.
pub(super) fn boolean(
    loc: &Locator,
    v: Spanned<toml::Value>,
    whose: String,
) -> Result<bool, PolicyError> {
    match v.get_ref() {
        toml::Value::Boolean(b) => Ok(*b),
        other => Err(PolicyError::BadDump {
            at: loc.of(&v),
            whose,
            found: other.to_string(),
        }),
    }
}
