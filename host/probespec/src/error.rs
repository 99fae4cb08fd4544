//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

/// A place in a spec: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1 (characters).
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Everything that stops a spec from becoming a module. Spec problems carry the line
/// and column (`Display` starts with `LINE:COL:`; [`SpecError::report`] adds the file).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text does not follow the grammar.
    #[error("{at}: syntax error: {message}")]
    Syntax {
        /// Where.
        at: Pos,
        /// What was expected.
        message: String,
    },
    /// The probed function is not in the guest kernel.
    #[error("{at}: the guest kernel {release} has no function `{name}`{hint}")]
    UnknownFunction {
        /// Where.
        at: Pos,
        /// Function named.
        name: String,
        /// Kernel checked.
        release: String,
        /// Close names, as ` (did you mean …?)`, or empty.
        hint: String,
    },
    /// The tracepoint is not in the guest kernel.
    #[error("{at}: the guest kernel {release} has no tracepoint `{name}`{hint}")]
    UnknownTracepoint {
        /// Where.
        at: Pos,
        /// `system:event`.
        name: String,
        /// Kernel checked.
        release: String,
        /// Close names or empty.
        hint: String,
    },
    /// A struct member that the type does not have.
    #[error("{at}: {type_name} has no member `{member}`; it has: {known}")]
    UnknownField {
        /// Where.
        at: Pos,
        /// The struct's C name.
        type_name: String,
        /// The member asked for.
        member: String,
        /// Members it has (the first few).
        known: String,
    },
    /// A type the guest kernel's BTF does not have, or one a spec cannot read.
    #[error("{at}: {message}")]
    BadType {
        /// Where.
        at: Pos,
        /// What is wrong and what to do.
        message: String,
    },
    /// A filter compares values of different types.
    #[error("{at}: filter compares `{operand}` ({ty}) with {other}; {advice}")]
    FilterType {
        /// Where.
        at: Pos,
        /// The operand's text.
        operand: String,
        /// Its type.
        ty: String,
        /// What it is compared with.
        other: String,
        /// What would work.
        advice: String,
    },
    /// Something said that the probe point does not allow, or said twice.
    #[error("{at}: {message}")]
    Semantics {
        /// Where.
        at: Pos,
        /// What is wrong and what to do.
        message: String,
    },
    /// The fields do not fit in one record.
    #[error("{at}: record would be {size} bytes with `{field}`; a record holds at most {max}: record fewer or shorter fields")]
    TooLarge {
        /// The field that overflows.
        at: Pos,
        /// Its name.
        field: String,
        /// Size with it.
        size: u32,
        /// The limit (`SPEC_RECORD_MAX`).
        max: u32,
    },
    /// The guest kernel's files (BTF, symbols, headers) could not be read.
    #[error("kernel {release}: {message}")]
    Kernel {
        /// The release.
        release: String,
        /// What is missing and what to do.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// kbuild failed on the generated C (a generator bug or a kernel the generator does
    /// not know): the compiler's last lines.
    #[error("building {module} against {kdir} failed (the generated C is kept in {dir}):\n{tail}")]
    Build {
        /// Module name.
        module: String,
        /// Headers used.
        kdir: PathBuf,
        /// Build directory kept for inspection.
        dir: PathBuf,
        /// The end of make's output.
        tail: String,
    },
}

impl SpecError {
    /// The position in the spec, for errors about the spec itself.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            SpecError::Syntax { at, .. }
            | SpecError::UnknownFunction { at, .. }
            | SpecError::UnknownTracepoint { at, .. }
            | SpecError::UnknownField { at, .. }
            | SpecError::BadType { at, .. }
            | SpecError::FilterType { at, .. }
            | SpecError::Semantics { at, .. }
            | SpecError::TooLarge { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// The message with the spec file in front (`probes/specs/x.probe:3:14: ...`).
    pub fn report(&self, file: &std::path::Path) -> String {
        match self.pos() {
            Some(_) => format!("{}:{self}", file.display()),
            None => self.to_string(),
        }
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SpecError + '_ {
    move |source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    }
}
