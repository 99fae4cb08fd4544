//! What can be wrong with a group file, each problem its own variant, each message
//! starting with where it is.

use std::path::PathBuf;

use thiserror::Error;
pub use vesper_toml_located::Location;
use vesper_toml_located::TomlFileError;

/// A group file that can't be used; nothing of it is pushed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Unreadable, not TOML, an unknown key (a typo?) or a missing one.
    #[error(transparent)]
    File(#[from] TomlFileError),
    /// A group name that is empty or has characters other than letters, digits, `-`, `_`.
    #[error("{at}: group name {name:?} must be 1-64 letters, digits, '-' or '_'")]
    BadName {
        /// Where.
        at: Location,
        /// The name.
        name: String,
    },
    /// No `[[module]]`.
    #[error("{at}: the group has no members; add [[module]] path = \"NAME.ko\"")]
    Empty {
        /// Where.
        at: Location,
    },
    /// More members than a group may have.
    #[error("{at}: {count} members; a group has at most {max}")]
    TooMany {
        /// Where.
        at: Location,
        /// Members found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A member with neither `path` nor `spec`, or both.
    #[error("{at}: member {member} needs exactly one of `path` (a .ko) or `spec`")]
    PathOrSpec {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
    },
    /// A `spec` member that could not be built into a module.
    #[error("{at}: member {member}: spec {}: {why}", spec.display())]
    SpecBuild {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
        /// The spec file, resolved against the group file's directory.
        spec: PathBuf,
        /// Why (the builder's words: the spec's own line and column where it has them).
        why: String,
    },
    /// A member's module file is missing or unreadable.
    #[error("{at}: member {member}: cannot read module {}", path.display())]
    MissingModule {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
        /// The file, resolved against the group file's directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A member's file is not a usable kernel module.
    #[error("{at}: member {member}: {}", path.display())]
    BadModule {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<vesper_modcheck::ModuleError>,
    },
    /// Two members load the same module.
    #[error(
        "{at}: member {member} loads module {module:?} again (member {first} loads it already)"
    )]
    Duplicate {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
        /// The module's name.
        module: String,
        /// The member that named it first.
        first: usize,
    },
    /// A member's parameters would be misread by the guest's loader.
    #[error("{at}: member {member} ({module})")]
    BadParam {
        /// Where.
        at: Location,
        /// 1-based member number.
        member: usize,
        /// The module's name.
        module: String,
        /// Why.
        #[source]
        source: vesper_modcheck::ParamError,
    },
}

impl GroupError {
    /// The message with its causes (why a file could not be read is in the source), on
    /// one line.
    pub fn report(&self) -> String {
        vesper_toml_located::report(self)
    }
}
