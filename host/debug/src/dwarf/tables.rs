//! The data a DWARF file's caches hold — the name index and the converted type
//! graphs — as plain types, below the code that builds them (index.rs, source.rs) and
//! the file that keeps them (elf.rs).

use std::collections::HashMap;
use std::time::Duration;

use crate::btf::{Btf, TypeId};

/// What a name may stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Struct,
    Union,
    Enum,
    Typedef,
    Base,
    Variable,
}

/// The first DIE (.debug_info offset) of each kind by one name.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Firsts {
    structs: Option<usize>,
    unions: Option<usize>,
    enums: Option<usize>,
    typedefs: Option<usize>,
    bases: Option<usize>,
    variables: Option<usize>,
}

impl Firsts {
    pub(super) fn slot(&mut self, kind: Kind) -> &mut Option<usize> {
        match kind {
            Kind::Struct => &mut self.structs,
            Kind::Union => &mut self.unions,
            Kind::Enum => &mut self.enums,
            Kind::Typedef => &mut self.typedefs,
            Kind::Base => &mut self.bases,
            Kind::Variable => &mut self.variables,
        }
    }

    pub(crate) fn get(mut self, kind: Kind) -> Option<usize> {
        *self.slot(kind)
    }
}

/// What indexing found, and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Compilation units.
    pub units: usize,
    /// Top-level DIEs looked at.
    pub dies: usize,
    /// Distinct names kept.
    pub names: usize,
    /// How long the pass took.
    pub took: Duration,
}

/// Names → first DIEs, and where each unit lies (to find a DIE's unit).
#[derive(Debug)]
pub(crate) struct Index {
    pub(super) names: HashMap<Box<str>, Firsts>,
    /// Unit start offsets, ascending, with their ends.
    pub(super) units: Vec<(usize, usize)>,
    pub(crate) stats: IndexStats,
}

impl Index {
    /// The first DIE of `kind` named `name`.
    pub(crate) fn lookup(&self, name: &str, kind: Kind) -> Option<usize> {
        self.names.get(name).and_then(|f| f.get(kind))
    }

    /// The start of the unit holding `offset`, if any does.
    pub(crate) fn unit_of(&self, offset: usize) -> Option<usize> {
        let i = self.units.partition_point(|&(start, _)| start <= offset);
        let &(start, end) = self.units.get(i.checked_sub(1)?)?;
        (offset < end).then_some(start)
    }
}

/// A converted type graph and the id of the type asked for.
#[derive(Debug)]
pub struct Converted {
    /// The types reachable from the root.
    pub btf: Btf,
    /// The root's id in `btf`.
    pub root: TypeId,
}
