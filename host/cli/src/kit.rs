//! Where `vesper probe` (and a group's spec members) find the guest kit: the same kit
//! vesperd and `vm start` use, so a spec builds for the kernel a guest was started with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vesper_api::{call, default_socket, Reply, Request};
use vesper_probespec::SpecError;

use crate::args::Cli;

/// The kit directory a CLI built from this repository defaults to, as vesperd does
/// (`vesper-guest-kit`'s `default_kit_dir`, which the CLI does not link): the
/// repository's `.vesper-kit`.
fn built_in_kit_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.vesper-kit");
    p.canonicalize().unwrap_or(p)
}

/// Finds the guest kit, in this order: `--kit DIR`; `$VESPER_KIT_DIR`; the kit of the
/// vesperd at `--socket` (it knows its `--kit-dir`), when it answers; else the
/// repository's `.vesper-kit` where a kit is built there.
#[derive(Debug, Clone)]
pub(crate) struct KitFinder {
    flag: Option<PathBuf>,
    env: Option<PathBuf>,
    socket: PathBuf,
    timeout: Duration,
    default_dir: PathBuf,
}

impl KitFinder {
    pub(crate) fn new(cli: &Cli, flag: Option<PathBuf>) -> KitFinder {
        KitFinder {
            flag,
            env: std::env::var_os("VESPER_KIT_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            socket: cli.socket.clone().unwrap_or_else(default_socket),
            // A local daemon answers this at once; a hung one must not stall a build.
            timeout: Duration::from_secs(cli.timeout.min(5)),
            default_dir: built_in_kit_dir(),
        }
    }

    /// The kit directory, or an error (for kernel `release`, `?` when not known yet)
    /// naming every place looked in and why each did not do.
    pub(crate) fn find(&self, release: Option<&str>) -> Result<PathBuf, SpecError> {
        if let Some(dir) = self.flag.clone().or_else(|| self.env.clone()) {
            return Ok(dir);
        }
        let mut looked = vec![
            "--kit: not given".to_string(),
            "$VESPER_KIT_DIR: not set".to_string(),
        ];
        // A reachable vesperd has the last word: its kit is the one its guests boot.
        match self.daemon_kit() {
            Ok((dir, None)) => return Ok(dir),
            Ok((dir, Some(problem))) => {
                looked.push(format!("vesperd's kit {}: {problem}", dir.display()))
            }
            Err(e) => {
                looked.push(format!("vesperd's kit: {e}"));
                let default = self.default_dir.clone();
                if default.join("manifest.json").is_file() {
                    return Ok(default);
                }
                looked.push(format!("{}: no kit built there", default.display()));
            }
        }
        Err(SpecError::Kernel {
            release: release.unwrap_or("?").to_string(),
            message: format!(
                "no guest kit found (looked at {}); build one with `cargo run -p \
                 vesper-guest-kit -- build`, or pass --kit DIR",
                looked.join("; ")
            ),
        })
    }

    /// vesperd's kit directory and, when no kit is usable there, why not.
    fn daemon_kit(&self) -> Result<(PathBuf, Option<String>), String> {
        match call(&self.socket, &Request::KitInfo, self.timeout) {
            Ok(Ok(Reply::KitInfo {
                dir,
                release: Some(_),
                ..
            })) => Ok((dir, None)),
            Ok(Ok(Reply::KitInfo { dir, problem, .. })) => {
                Ok((dir, Some(problem.unwrap_or_else(|| "no usable kit".into()))))
            }
            Ok(Ok(other)) => Err(format!("unexpected reply {other:?}")),
            Ok(Err(e)) => Err(e.message),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finder(flag: Option<&str>, env: Option<&str>, socket: &Path) -> KitFinder {
        KitFinder {
            flag: flag.map(PathBuf::from),
            env: env.map(PathBuf::from),
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(1),
            default_dir: PathBuf::from("/nonexistent/repo/.vesper-kit"),
        }
    }

    #[test]
    fn flag_then_env_are_taken_as_given() {
        let none = Path::new("/nonexistent/vesperd.sock");
        assert_eq!(
            finder(Some("/a"), Some("/b"), none).find(None).unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            finder(None, Some("/b"), none).find(None).unwrap(),
            PathBuf::from("/b")
        );
    }

    #[test]
    fn without_a_kit_the_error_names_every_place_looked() {
        let sock = Path::new("/nonexistent/vesperd.sock");
        let e = finder(None, None, sock).find(Some("6.1.0-57-cloud-amd64"));
        let SpecError::Kernel { release, message } = e.unwrap_err() else {
            panic!("not a kernel-files error");
        };
        assert_eq!(release, "6.1.0-57-cloud-amd64");
        for part in [
            "--kit: not given",
            "$VESPER_KIT_DIR: not set",
            "vesperd's kit:",
            "/nonexistent/vesperd.sock",
            "/nonexistent/repo/.vesper-kit: no kit built there",
            "cargo run -p vesper-guest-kit",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
    }

    #[test]
    fn the_default_kit_is_taken_where_one_is_built() {
        let dir = std::env::temp_dir().join(format!("vesper-kit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), "{}").unwrap();
        let mut f = finder(None, None, Path::new("/nonexistent/vesperd.sock"));
        f.default_dir = dir.clone();
        let found = f.find(None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), dir);
    }
}
