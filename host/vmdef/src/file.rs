//! The TOML form of a definition: one file per VM, the user's or vesperd's own copy in
//! the run directory.

use std::path::Path;

use vesper_toml_located::Locator;

use crate::{VmDefError, VmDefinition};

/// Parses a definition from TOML text; errors are placed in `file` (if any).
pub fn from_toml_str(text: &str, file: Option<&Path>) -> Result<VmDefinition, VmDefError> {
    toml::from_str(text).map_err(|e| {
        let loc = Locator { text, file };
        VmDefError::File(loc.toml_error(&e))
    })
}

/// Reads a definition file; its relative paths are taken from the file's directory.
pub fn from_toml_file(path: &Path) -> Result<VmDefinition, VmDefError> {
    let text = vesper_toml_located::read("VM definition", path)?;
    let mut def = from_toml_str(&text, Some(path))?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    def.resolve_paths(abs.parent().unwrap_or(Path::new("/")));
    Ok(def)
}

/// The definition as TOML (what vesperd writes to `RUN/guests/NAME/definition.toml`).
pub fn to_toml(def: &VmDefinition) -> String {
    // Every field serializes (no maps with non-string keys): this cannot fail.
    toml::to_string_pretty(def).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}
