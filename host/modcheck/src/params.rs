//! Module parameters as the guest's loader will read them: `name=value` words joined
//! by spaces, refused here when the kernel's parser would misread them.

use thiserror::Error;

/// Why a module parameter was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    /// Not `name=value` with a plain name, or a control character in it.
    #[error(
        "bad module parameter {0:?}: expected name=value with a name of letters, digits and _"
    )]
    Malformed(String),
    /// The joined words do not fit the request's parameter field.
    #[error("module parameters are {len} bytes; the limit is {limit}")]
    TooLong {
        /// Joined length.
        len: usize,
        /// Largest allowed.
        limit: usize,
    },
}

/// Checks one `name=value` word.
pub fn check_param(p: &str) -> Result<(), ParamError> {
    let key = p.split('=').next().unwrap_or("");
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    // A control character (newline, NUL) would split or end the parameter string.
    if !key_ok || p.chars().any(|c| c.is_control()) {
        return Err(ParamError::Malformed(p.to_string()));
    }
    Ok(())
}

/// Checks every word and joins them; the result is at most `limit` bytes.
pub fn join_params(params: &[String], limit: usize) -> Result<String, ParamError> {
    for p in params {
        check_param(p)?;
    }
    let joined = params.join(" ");
    if joined.len() > limit {
        return Err(ParamError::TooLong {
            len: joined.len(),
            limit,
        });
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_before_they_reach_the_guest() {
        assert_eq!(
            join_params(&["a=1".into(), "watch=svc".into()], 100).unwrap(),
            "a=1 watch=svc"
        );
        assert!(check_param("=1").is_err());
        assert!(check_param("a=1\nb").is_err());
        assert!(matches!(
            join_params(&["x".repeat(2000)], 1023),
            Err(ParamError::TooLong { len: 2000, .. })
        ));
    }
}
