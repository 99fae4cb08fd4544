//! Running the system's tools (`ip`, `nsenter`, `mount`, `crm`, ...) with errors that say
//! which step ran what, what it printed and what to do.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::LabError;

/// The command line of `c`, for messages.
pub fn describe(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `c` to completion; its stdout on success, else a [`LabError::Command`] carrying
/// the last lines of stderr and `hint`.
pub fn run(step: &str, hint: &str, c: &mut Command) -> Result<String, LabError> {
    let command = describe(c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            step: step.to_string(),
            command: command.clone(),
            why: e.to_string(),
            hint: hint.to_string(),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    Err(LabError::Command {
        step: step.to_string(),
        command,
        why: format!("{}{}", out.status, tail(&text, 6)),
        hint: hint.to_string(),
    })
}

/// `argv` as a command.
pub fn command(argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    c
}

/// The last `n` non-empty lines of `text`, each on its own indented line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

/// The last `n` lines of a log file, for errors ("" if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.is_empty() {
        return String::new();
    }
    format!("\n  last lines of {}:{}", path.display(), tail(&text, n))
}

/// An I/O error of `step` on `path`.
pub fn io_err(step: &str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let step = step.to_string();
    let path = path.to_path_buf();
    move |source| LabError::Io { step, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_step_command_output_and_hint() {
        let e = run(
            "step x",
            "do y",
            &mut command(&["sh", "-c", "echo out; echo bad thing >&2; exit 3"]),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("step x: `sh -c"), "{s}");
        assert!(s.contains("bad thing") && s.contains("do y"), "{s}");
        assert!(!s.contains("out\n"), "stderr wins over stdout: {s}");
        assert_eq!(
            run("s", "h", &mut command(&["echo", "hi"])).unwrap(),
            "hi\n"
        );
        assert!(run("s", "h", &mut command(&["/nonexistent/tool"])).is_err());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "\n    b\n    c");
        assert_eq!(tail("", 3), "");
    }
}
