//! Where in a TOML file a problem is, and what kind of problem `toml` found: the part
//! Vesper's file formats (policies, probe groups) share before each maps it into its own
//! error enum and location type.
#![deny(missing_docs)]

use std::ops::Range;

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
