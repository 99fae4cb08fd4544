//! The name index: one pass over every unit's top-level DIEs (children of the unit
//! DIE, skipped over with `DW_AT_sibling`), recording for each name the first
//! definition of each kind. Types are not converted here; a vmlinux repeats its
//! headers' types in every unit, so the first definition stands for all.

use std::collections::HashMap;
use std::time::Instant;

use gimli::{constants as dw, AttributeValue, DebugInfoOffset};

use super::elf::{DwarfFile, Reader};
use super::tables::{Firsts, Index, IndexStats, Kind};
use super::DwarfError;

impl Index {
    /// Indexes `file`: every unit's top-level DIEs.
    pub(crate) fn build(file: &DwarfFile) -> Result<Index, DwarfError> {
        let t0 = Instant::now();
        let dwarf = file.dwarf();
        let path = file.path();
        let mut names: HashMap<Box<str>, Firsts> = HashMap::new();
        let mut units = Vec::new();
        let mut dies = 0usize;
        let mut headers = dwarf.units();
        loop {
            let header = match headers.next() {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    let at = units.last().map_or(0, |&(_, end)| end);
                    return Err(DwarfError::parse(path, at, e));
                }
            };
            let start = header.debug_info_offset().map_or(0, |DebugInfoOffset(o)| o);
            let end = start.saturating_add(header.length_including_self());
            units.push((start, end));
            let unit = dwarf
                .unit(header)
                .map_err(|e| DwarfError::parse(path, start, e))?;
            dies += index_unit(&dwarf, &unit, &mut names)
                .map_err(|(off, e)| DwarfError::parse(path, start.saturating_add(off), e))?;
        }
        let stats = IndexStats {
            units: units.len(),
            dies,
            names: names.len(),
            took: t0.elapsed(),
        };
        tracing::info!(
            path = %path.display(),
            units = stats.units,
            dies = stats.dies,
            names = stats.names,
            ms = stats.took.as_millis() as u64,
            "DWARF names indexed"
        );
        Ok(Index {
            names,
            units,
            stats,
        })
    }
}

/// Indexes one unit's top-level DIEs; returns how many, or where parsing failed.
fn index_unit(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    names: &mut HashMap<Box<str>, Firsts>,
) -> Result<usize, (usize, gimli::Error)> {
    let mut cursor = unit.entries();
    let base = unit.header.header_size();
    // The unit DIE, then its first child.
    let has_children = match cursor.next_dfs().map_err(|e| (base, e))? {
        Some(root) => root.has_children(),
        None => return Ok(0),
    };
    if !has_children {
        return Ok(0);
    }
    let mut n = 0usize;
    let first = cursor.next_offset().0;
    let mut entry = cursor.next_dfs().map_err(|e| (first, e))?;
    while let Some(e) = entry {
        if e.depth() != 1 {
            break; // The unit DIE had no real children.
        }
        n += 1;
        let kind = match e.tag() {
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type => Some(Kind::Struct),
            dw::DW_TAG_union_type => Some(Kind::Union),
            dw::DW_TAG_enumeration_type => Some(Kind::Enum),
            dw::DW_TAG_typedef => Some(Kind::Typedef),
            dw::DW_TAG_base_type => Some(Kind::Base),
            dw::DW_TAG_variable => Some(Kind::Variable),
            _ => None,
        };
        if let Some(kind) = kind {
            let declaration = matches!(
                e.attr_value(dw::DW_AT_declaration),
                Some(AttributeValue::Flag(true))
            );
            // A declared struct says nothing; a declared variable still has its type.
            let useful = match kind {
                Kind::Variable => e.attr(dw::DW_AT_type).is_some(),
                Kind::Struct | Kind::Union | Kind::Enum => !declaration,
                _ => true,
            };
            let name = e
                .attr_value(dw::DW_AT_name)
                .and_then(|v| dwarf.attr_string(unit, v).ok())
                .and_then(|s| std::str::from_utf8(s.slice()).ok());
            if let (true, Some(name)) = (useful, name) {
                let offset = e
                    .offset()
                    .to_debug_info_offset(&unit.header)
                    .map_or(0, |o| o.0);
                let firsts = match names.get_mut(name) {
                    Some(f) => f,
                    None => names.entry(name.into()).or_default(),
                };
                firsts.slot(kind).get_or_insert(offset);
            }
        }
        let here = e.offset().0;
        entry = cursor.next_sibling().map_err(|e| (here, e))?;
    }
    Ok(n)
}
