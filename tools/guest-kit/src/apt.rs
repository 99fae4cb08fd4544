//! Pure helpers for reading apt/dpkg output (no commands run here).

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Kernel flavour the kit uses.
pub const FLAVOUR: &str = "cloud-amd64";
/// Meta package whose dependency names the current kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// From `apt-cache depends linux-image-cloud-amd64`, the kernel release the meta package
/// points at (`6.1.0-56-cloud-amd64` for `Depends: linux-image-6.1.0-56-cloud-amd64`).
/// Virtual (`<...>`) entries are ignored; with several candidates the newest wins.
pub fn parse_depends_release(output: &str) -> Option<String> {
    let suffix = format!("-{FLAVOUR}");
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches('|');
            let dep = line.strip_prefix("Depends:")?.trim();
            let rel = dep.strip_prefix("linux-image-")?;
            let ver = rel.strip_suffix(&suffix)?;
            // `<ver>` must look like 6.1.0-56: digits, dots and dashes, starting with a digit.
            let ok = ver.starts_with(|c: char| c.is_ascii_digit())
                && ver
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
            ok.then(|| rel.to_string())
        })
        .max_by(|a, b| cmp_release(a, b))
}

/// Orders kernel releases like `6.1.0-9-cloud-amd64` < `6.1.0-56-cloud-amd64` by their
/// numeric components.
pub fn cmp_release(a: &str, b: &str) -> Ordering {
    fn key(s: &str) -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// From `dpkg-query -W -f='${Package} ${Status}\n' PKG...`, the packages that are fully
/// installed (`install ok installed`). Architecture qualifiers (`pkg:amd64`) are dropped.
pub fn parse_installed(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|line| {
            let (pkg, status) = line.trim().split_once(' ')?;
            (status.trim() == "install ok installed")
                .then(|| pkg.split(':').next().unwrap_or(pkg).to_string())
        })
        .collect()
}

/// The `.deb` name `apt-get download linux-image-<release>` produces starts like this.
pub fn image_deb_prefix(release: &str) -> String {
    format!("linux-image-{release}_")
}

/// Debian's debug-symbols package of kernel `release` (its `vmlinux` with DWARF).
pub fn dbg_package(release: &str) -> String {
    format!("linux-image-{release}-dbg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_simple() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends_release(out).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn depends_ignores_virtual_and_other_flavours() {
        let out = "linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n  Recommends: foo\n  \
                   Depends: linux-image-6.1.0-9-amd64\n |Depends: linux-image-6.1.0-9-cloud-amd64\n  \
                   Depends: linux-image-6.1.0-56-cloud-amd64\n  Breaks: linux-image-6.1.0-99-cloud-amd64\n";
        assert_eq!(
            parse_depends_release(out).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn package_names_follow_debian() {
        let rel = "6.1.0-57-cloud-amd64";
        assert_eq!(dbg_package(rel), "linux-image-6.1.0-57-cloud-amd64-dbg");
        // The image's .deb prefix does not match the -dbg package's .deb.
        let dbg_deb = "linux-image-6.1.0-57-cloud-amd64-dbg_6.1.192-3_amd64.deb";
        assert!(!dbg_deb.starts_with(&image_deb_prefix(rel)));
        assert!(dbg_deb.starts_with(&format!("{}_", dbg_package(rel))));
    }

    #[test]
    fn depends_none() {
        assert_eq!(parse_depends_release(""), None);
        assert_eq!(parse_depends_release("E: No packages found\n"), None);
        assert_eq!(
            parse_depends_release("  Depends: linux-image-foo-cloud-amd64\n"),
            None
        );
    }

    #[test]
    fn release_order_is_numeric() {
        assert_eq!(
            cmp_release("6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Ordering::Less
        );
        assert_eq!(
            cmp_release("6.10.0-1-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Ordering::Greater
        );
    }

    #[test]
    fn installed_parsing() {
        let out = "cpio install ok installed\nqemu-system-x86 deinstall ok config-files\n\
                   libc6-dev:amd64 install ok installed\nmake unknown ok not-installed\n";
        let s = parse_installed(out);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            ["cpio".to_string(), "libc6-dev".to_string()]
        );
    }
}
