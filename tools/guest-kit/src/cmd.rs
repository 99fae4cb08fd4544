//! Running external commands with errors that say what failed and why.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::KitError;

/// How many trailing stderr lines an error keeps.
const TAIL_LINES: usize = 15;

/// `program arg arg` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '\'', '"', '$']) {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Last lines of a command's output: stderr, or stdout when stderr is empty (make and apt
/// sometimes say the useful part there).
pub fn tail(out: &Output) -> String {
    let pick = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    let text = String::from_utf8_lossy(pick);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs `cmd` to completion with output captured; non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<Output, KitError> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(KitError::CommandFailed {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr_tail: tail(&out),
        });
    }
    Ok(out)
}

/// Runs `cmd` with `input` on its stdin and output captured, and returns the output
/// whatever the exit status.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output, KitError> {
    use std::io::Write;
    let spawn_err = |cmd: &Command, source| KitError::Spawn {
        command: describe(cmd),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_err(cmd, e))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // A command that exits without reading all of it is judged by its status.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().map_err(|e| spawn_err(cmd, e))
}

/// Runs `cmd` with output captured and returns it whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output, KitError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| KitError::Spawn {
            command: describe(cmd),
            source,
        })
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C DEST MEMBERS...` (members as `--wildcards`
/// patterns).
pub fn extract_deb_members(deb: &Path, dest: &Path, members: &[String]) -> Result<(), KitError> {
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("--fsys-tarfile").arg(deb);
    let mut dpkg_child = dpkg
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| KitError::Spawn {
            command: describe(&dpkg),
            source,
        })?;
    let pipe = dpkg_child.stdout.take().expect("stdout was piped");
    let mut tar = Command::new("tar");
    tar.arg("-x")
        .arg("-C")
        .arg(dest)
        .arg("--wildcards")
        .args(members);
    let tar_out = tar
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|c| c.wait_with_output())
        .map_err(|source| KitError::Spawn {
            command: describe(&tar),
            source,
        })?;
    let dpkg_out = dpkg_child
        .wait_with_output()
        .map_err(|source| KitError::Spawn {
            command: describe(&dpkg),
            source,
        })?;
    if !dpkg_out.status.success() {
        return Err(KitError::CommandFailed {
            command: describe(&dpkg),
            status: dpkg_out.status.to_string(),
            stderr_tail: tail(&dpkg_out),
        });
    }
    if !tar_out.status.success() {
        return Err(KitError::CommandFailed {
            command: describe(&tar),
            status: tar_out.status.to_string(),
            stderr_tail: tail(&tar_out),
        });
    }
    Ok(())
}
