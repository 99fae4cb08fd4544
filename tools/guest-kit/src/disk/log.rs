//! The disk build's log: every command it runs, with all its output, in one file
//! (`<kit>/disk/build.log`), so a failure that the error's last lines do not explain
//! can be read in full.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::{cmd, io_err, KitError};

pub(crate) struct BuildLog {
    pub(crate) path: PathBuf,
    file: fs::File,
    started: Instant,
}

impl BuildLog {
    /// Starts a new log at `path` (an older one is replaced).
    pub(crate) fn create(path: &Path) -> Result<BuildLog, KitError> {
        let file = fs::File::create(path).map_err(io_err("create", path))?;
        Ok(BuildLog {
            path: path.to_path_buf(),
            file,
            started: Instant::now(),
        })
    }

    /// A line of the log's own (a step starting, a check).
    pub(crate) fn note(&mut self, line: &str) {
        let t = self.started.elapsed().as_secs_f64();
        // The log helps reading a failure; failing to write it is not one.
        let _ = writeln!(self.file, "[{t:7.1}s] {line}");
    }

    /// Runs `cmd` (with `input` on its stdin, if any), logs its command line, output
    /// and status; a non-zero exit is an error with the output's last lines.
    pub(crate) fn run(
        &mut self,
        cmd: &mut Command,
        input: Option<&[u8]>,
    ) -> Result<Output, KitError> {
        let line = cmd::describe(cmd);
        self.note(&format!("$ {line}"));
        let out = match input {
            Some(i) => cmd::output_with_input(cmd, i)?,
            None => cmd::output(cmd)?,
        };
        let _ = self.file.write_all(&out.stdout);
        let _ = self.file.write_all(&out.stderr);
        self.note(&format!("({})", out.status));
        if !out.status.success() {
            return Err(KitError::CommandFailed {
                command: line,
                status: out.status.to_string(),
                stderr_tail: cmd::tail(&out),
            });
        }
        Ok(out)
    }
}
