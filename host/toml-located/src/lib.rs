//! Where in a TOML file a problem is, and what kind of problem `toml` found: the part
//! Vesper's file formats (policies, probe groups) share. Each format's error enum wraps
//! [`TomlFileError`] for the problems every TOML file can have (unreadable, not TOML, an
//! unknown or missing key) and adds its own, all placed with one [`Location`].
#![deny(missing_docs)]

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml::Spanned;

/// Where in a file a problem is: the file (when the text came from one) and the 1-based
/// line and column (when the problem has a place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, if the text came from one.
    pub file: Option<PathBuf>,
    /// 1-based line and column.
    pub line: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some((l, c))) => write!(f, "{}:{l}:{c}", p.display()),
            (Some(p), None) => write!(f, "{}", p.display()),
            (None, Some((l, c))) => write!(f, "line {l}, column {c}"),
            (None, None) => f.write_str("(text)"),
        }
    }
}

/// Turns byte spans of `text` into [`Location`]s in `file`.
#[derive(Debug, Clone, Copy)]
pub struct Locator<'a> {
    /// The whole text.
    pub text: &'a str,
    /// The file it came from, if any.
    pub file: Option<&'a Path>,
}

impl Locator<'_> {
    /// Where byte `span.start` is.
    pub fn at(&self, span: Range<usize>) -> Location {
        Location {
            file: self.file.map(PathBuf::from),
            line: Some(line_column(self.text, span.start)),
        }
    }

    /// Where a spanned value is.
    pub fn of<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span())
    }

    /// The file, with no place in it.
    pub fn file_only(&self) -> Location {
        Location {
            file: self.file.map(PathBuf::from),
            line: None,
        }
    }

    /// A `toml` error as a [`TomlFileError`], placed where it names.
    pub fn toml_error(&self, e: &toml::de::Error) -> TomlFileError {
        let (span, problem) = classify(e);
        let at = span.map_or_else(|| self.file_only(), |s| self.at(s));
        match problem {
            TomlProblem::UnknownKey { key, expected } => {
                TomlFileError::UnknownKey { at, key, expected }
            }
            TomlProblem::MissingKey { key } => TomlFileError::MissingKey { at, key },
            TomlProblem::Syntax { message } => TomlFileError::Syntax { at, message },
        }
    }
}

/// What any TOML file of Vesper's can get wrong, whatever its format.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TomlFileError {
    /// The file could not be read.
    #[error("cannot read {what} file {}", path.display())]
    Io {
        /// What the file is (`policy`, `group`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a value of the wrong type.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The TOML parser's words.
        message: String,
    },
    /// A key the format does not have (a typo?).
    #[error("{at}: unknown key `{key}`; expected one of {expected}")]
    UnknownKey {
        /// Where.
        at: Location,
        /// The key.
        key: String,
        /// The keys allowed there.
        expected: String,
    },
    /// A required key is missing.
    #[error("{at}: missing key `{key}`")]
    MissingKey {
        /// Where (the table that lacks it).
        at: Location,
        /// The key.
        key: String,
    },
}

/// An error's message and each of its causes, on one line (`msg: cause: cause`): for
/// file errors that travel as text (an API reply, a log line).
pub fn report(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Reads the `what` file at `path` (`policy`, `group`) as text.
pub fn read(what: &'static str, path: &Path) -> Result<String, TomlFileError> {
    std::fs::read_to_string(path).map_err(|source| TomlFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// What `toml` could not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TomlProblem {
    /// A key the format does not have.
    UnknownKey {
        /// The key.
        key: String,
        /// The keys allowed there, as `toml` lists them.
        expected: String,
    },
    /// A key the format needs.
    MissingKey {
        /// The key.
        key: String,
    },
    /// Anything else: the message, on one line.
    Syntax {
        /// What `toml` said.
        message: String,
    },
}

/// Sorts `e` into a [`TomlProblem`], with the byte span it names, if any.
pub fn classify(e: &toml::de::Error) -> (Option<Range<usize>>, TomlProblem) {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string).unwrap_or_default();
    let problem = if let Some(rest) = message.strip_prefix("unknown field ") {
        TomlProblem::UnknownKey {
            key: quoted(rest),
            expected: rest
                .split_once("expected ")
                .map_or_else(String::new, |(_, e)| e.to_string()),
        }
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        TomlProblem::MissingKey { key: quoted(rest) }
    } else {
        TomlProblem::Syntax { message }
    };
    (e.span(), problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Host {
        name: String,
    }

    #[test]
    fn a_file_that_cannot_be_read_reports_why_on_one_line() {
        let e = read("policy", Path::new("/nonexistent/p.toml")).unwrap_err();
        let r = report(&e);
        assert!(
            r.starts_with("cannot read policy file /nonexistent/p.toml: ")
                && r.contains("No such file"),
            "{r}"
        );
    }

    #[test]
    fn lines_and_columns_count_characters_from_one() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 6), (2, 1));
        assert_eq!(line_column(t, 9), (2, 3), "é is one column");
        assert_eq!(
            line_column(t, 8),
            (2, 2),
            "inside é: the character it is in"
        );
        assert_eq!(line_column(t, 999), (3, 1));
    }

    #[test]
    fn toml_errors_are_sorted_with_their_spans() {
        let e = "x = = 1".parse::<toml::Table>().unwrap_err();
        let (span, p) = classify(&e);
        assert!(span.is_some());
        assert!(matches!(p, TomlProblem::Syntax { .. }), "{p:?}");
        let e = toml::from_str::<Host>("name = \"a\"\nnmae = 1\n").unwrap_err();
        let (span, p) = classify(&e);
        assert_eq!(
            line_column("name = \"a\"\nnmae = 1\n", span.unwrap().start),
            (2, 1)
        );
        assert!(
            matches!(&p, TomlProblem::UnknownKey { key, expected } if key == "nmae" && expected.contains("name")),
            "{p:?}"
        );
        let e = toml::from_str::<Host>("").unwrap_err();
        assert_eq!(
            classify(&e).1,
            TomlProblem::MissingKey { key: "name".into() }
        );
    }
}
