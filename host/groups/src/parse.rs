//! Group text to [`ProbeGroup`]: TOML read with spans, then every member checked.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use vesper_toml_located::Locator;

use crate::{GroupError, Member, ProbeGroup, SpecBuilder, MAX_MEMBERS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    #[serde(default)]
    module: Vec<Spanned<RawMember>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    path: Option<Spanned<String>>,
    spec: Option<Spanned<String>>,
    #[serde(default)]
    params: Vec<Spanned<String>>,
    order: Option<i64>,
}

/// Largest joined parameter string the guest's loader takes (its field holds a NUL too).
const PARAMS_LIMIT: usize = vesper_shared_abi::PARAMS_LEN as usize - 1;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(crate) fn parse(
    text: &str,
    file: &Path,
    specs: &mut SpecBuilder<'_>,
) -> Result<ProbeGroup, GroupError> {
    let loc = Locator {
        text,
        file: Some(file),
    };
    let raw: RawGroup = toml::from_str(text).map_err(|e| loc.toml_error(&e))?;
    let name_at = loc.at(raw.name.span());
    let name = raw.name.into_inner();
    if !valid_name(&name) {
        return Err(GroupError::BadName { at: name_at, name });
    }
    if raw.module.is_empty() {
        return Err(GroupError::Empty { at: name_at });
    }
    if raw.module.len() > MAX_MEMBERS {
        return Err(GroupError::TooMany {
            at: name_at,
            count: raw.module.len(),
            max: MAX_MEMBERS,
        });
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut members: Vec<Member> = Vec::with_capacity(raw.module.len());
    for (i, m) in raw.module.into_iter().enumerate() {
        let number = i + 1;
        let member_at = loc.at(m.span());
        let m = m.into_inner();
        let (at, path, spec) = match (m.path, m.spec) {
            (Some(p), None) => (loc.at(p.span()), dir.join(p.into_inner()), None),
            (None, Some(s)) => {
                let at = loc.at(s.span());
                let spec = dir.join(s.into_inner());
                let built = specs(&spec).map_err(|why| GroupError::SpecBuild {
                    at: at.clone(),
                    member: number,
                    spec: spec.clone(),
                    why,
                })?;
                (at, built, Some(spec))
            }
            _ => {
                return Err(GroupError::PathOrSpec {
                    at: member_at,
                    member: number,
                })
            }
        };
        let image = std::fs::read(&path).map_err(|source| GroupError::MissingModule {
            at: at.clone(),
            member: number,
            path: path.clone(),
            source,
        })?;
        // The guest's vermagic is not known here; vesperd checks it before each push.
        let info =
            vesper_modcheck::check_module(&image, None, vesper_modcheck::DEFAULT_MAX_IMAGE_SIZE)
                .map_err(|source| GroupError::BadModule {
                    at: at.clone(),
                    member: number,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
        if let Some(first) = members.iter().find(|o| o.module == info.name) {
            return Err(GroupError::Duplicate {
                at,
                member: number,
                module: info.name,
                first: first.number,
            });
        }
        for p in &m.params {
            vesper_modcheck::check_param(p.get_ref()).map_err(|source| GroupError::BadParam {
                at: loc.at(p.span()),
                member: number,
                module: info.name.clone(),
                source,
            })?;
        }
        let params: Vec<String> = m.params.into_iter().map(Spanned::into_inner).collect();
        vesper_modcheck::join_params(&params, PARAMS_LIMIT).map_err(|source| {
            GroupError::BadParam {
                at: member_at,
                member: number,
                module: info.name.clone(),
                source,
            }
        })?;
        members.push(Member {
            number,
            path,
            spec,
            module: info.name,
            params,
            order: m.order.unwrap_or(0),
            image,
        });
    }
    // Stable: equal `order` keeps file order.
    members.sort_by_key(|m| m.order);
    Ok(ProbeGroup {
        name,
        file: file.to_path_buf(),
        members,
    })
}

#[cfg(test)]
mod tests;
