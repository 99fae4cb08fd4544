//! How the CLI fails: one error line (or JSON object) and an exit code that says what
//! kind of failure it was (the codes `vesper --help` lists).

/// A command refused on this side: its exit code, error code and message.
pub(crate) type Refusal = (i32, &'static str, String);

use std::process::ExitCode;

use vesper_api::{ApiError, ClientError};

pub(crate) fn fail(json: bool, code: i32, kind: &str, message: &str) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": false, "error": { "code": kind, "message": message } })
        );
    } else {
        eprintln!("vesper: {message}");
    }
    ExitCode::from(code as u8)
}

/// Exits for a failure to talk to the daemon: unreachable or gone (69), no reply within
/// --timeout (the timeout code), anything else internal (70).
pub(crate) fn client_fail(json: bool, e: ClientError) -> ExitCode {
    let (code, kind) = match &e {
        ClientError::Connect { .. } => (69, "unreachable"),
        ClientError::WentAway => (69, "went_away"),
        ClientError::Timeout(_) => (vesper_api::TIMEOUT_EXIT_CODE, "timeout"),
        _ => (70, "internal"),
    };
    fail(json, code, kind, &e.to_string())
}

/// Exits for a daemon-side error with the code its kind maps to.
pub(crate) fn api_fail(json: bool, e: ApiError) -> ExitCode {
    let kind = serde_json::to_value(e.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match e.detail {
        Some(detail) if json => {
            println!(
                "{}",
                serde_json::json!({ "ok": false, "error": { "code": kind, "message": e.message, "detail": detail } })
            );
            ExitCode::from(e.code.exit_code() as u8)
        }
        _ => fail(json, e.code.exit_code(), &kind, &e.message),
    }
}
