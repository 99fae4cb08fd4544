//! Building what goes into the guest: the kernel modules, the static helpers and the
//! mini frontend, each only when its sources changed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::kernel::GUEST_DRIVERS;
use crate::{
    built_modules, cmd, io_err, module_sources, read, write_atomic, Fnv, Helper, KitError,
    Progress, ABI_HEADER, HELPERS, MINI_FRONTEND_DIR, MINI_FRONTEND_ELF, MODULE_DIRS,
    STRIPPED_MODULE_DIRS,
};

pub(crate) const MODULES_STAMP: &str = ".sources-hash";

/// Step 6: build each module directory with make and copy the `.ko` files into
/// `modules_dir` (stripped for [`STRIPPED_MODULE_DIRS`]) and, with their DWARF, into
/// `debug_dir`, unless the sources hash matches the stamp. Returns name → path.
pub(crate) fn build_modules(
    p: &Progress,
    root: &Path,
    kdir: &Path,
    release: &str,
    modules_dir: &Path,
    debug_dir: &Path,
) -> Result<(BTreeMap<String, PathBuf>, String), KitError> {
    let mut h = Fnv::new();
    h.bytes(release.as_bytes())
        .bytes(kdir.as_os_str().as_encoded_bytes());
    let mut present = Vec::new();
    for &rel in MODULE_DIRS {
        let d = root.join(rel);
        if !d.is_dir() {
            p.warn(&format!(
                "{} does not exist yet; skipping its modules",
                d.display()
            ));
            continue;
        }
        if !d.join("Makefile").is_file() {
            p.warn(&format!(
                "{} has no Makefile yet; skipping its modules",
                d.display()
            ));
            continue;
        }
        let mut srcs = Vec::new();
        module_sources(&d, &mut srcs)?;
        h.bytes(rel.as_bytes());
        for s in &srcs {
            let relpath = s.strip_prefix(&d).unwrap_or(s);
            h.bytes(relpath.as_os_str().as_encoded_bytes())
                .bytes(&read(s)?);
        }
        present.push((d, STRIPPED_MODULE_DIRS.contains(&rel)));
    }
    let hash = h.hex();
    let stamp = modules_dir.join(MODULES_STAMP);

    // Up to date: stamp = hash line + one module name per line, all copies present.
    if let Ok(text) = fs::read_to_string(&stamp) {
        let mut lines = text.lines();
        if lines.next() == Some(hash.as_str()) {
            let names: Vec<&str> = lines.collect();
            let map: BTreeMap<String, PathBuf> = names
                .iter()
                .map(|n| (n.to_string(), modules_dir.join(format!("{n}.ko"))))
                .collect();
            let debug_copies = names
                .iter()
                .all(|n| debug_dir.join(format!("{n}.ko")).is_file());
            if debug_copies && map.values().all(|p| p.is_file()) {
                return Ok((
                    map,
                    format!("up to date ({} modules, sources unchanged)", names.len()),
                ));
            }
        }
    }

    fs::create_dir_all(modules_dir).map_err(io_err("create", modules_dir))?;
    fs::create_dir_all(debug_dir).map_err(io_err("create", debug_dir))?;
    let _ = fs::remove_file(&stamp);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut map = BTreeMap::new();
    for (d, strip) in &present {
        let t = Instant::now();
        cmd::run(
            Command::new("make")
                .arg("-C")
                .arg(d)
                .arg(format!("-j{jobs}"))
                .arg(format!("KDIR={}", kdir.display())),
        )?;
        let mut kos = Vec::new();
        built_modules(d, &mut kos)?;
        if kos.is_empty() {
            p.warn(&format!("make in {} produced no .ko files", d.display()));
        }
        for ko in kos {
            let name = ko
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dst = modules_dir.join(format!("{name}.ko"));
            if map.contains_key(&name) {
                p.warn(&format!(
                    "module {name} built twice; keeping {}",
                    ko.display()
                ));
            }
            install_module(&ko, &name, modules_dir, debug_dir, *strip)?;
            map.insert(name, dst);
        }
        p.line(&format!(
            "      make -C {} done in {:.2}s",
            d.display(),
            t.elapsed().as_secs_f64()
        ));
    }
    // Modules whose sources are gone: removed only now, after the new set is in place
    // (the guest drivers' debug files, step 5's, stay).
    remove_stale(modules_dir, |n| map.contains_key(n))?;
    remove_stale(debug_dir, |n| {
        map.contains_key(n) || GUEST_DRIVERS.contains(&n)
    })?;
    let mut text = hash;
    for n in map.keys() {
        text.push('\n');
        text.push_str(n);
    }
    text.push('\n');
    write_atomic(&stamp, text.as_bytes(), None)?;
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let note = if names.is_empty() {
        "no module sources yet; 0 modules".to_string()
    } else {
        format!("built {} modules: {}", map.len(), names.join(" "))
    };
    Ok((map, note))
}

/// Copies a built `ko` to `<debug_dir>/<name>.ko` as built (with its DWARF) and to
/// `<modules_dir>/<name>.ko` for guests, stripped of DWARF if `strip` (`objcopy
/// --strip-debug` keeps the GNU build ID drgn matches the two by). Each is replaced,
/// never removed first: a guest or test that pushes a module while the kit rebuilds
/// reads the old file or the new one, not a missing one.
fn install_module(
    ko: &Path,
    name: &str,
    modules_dir: &Path,
    debug_dir: &Path,
    strip: bool,
) -> Result<(), KitError> {
    let debug_tmp = debug_dir.join(format!(".{name}.ko.new"));
    fs::copy(ko, &debug_tmp).map_err(io_err("copy to", &debug_tmp))?;
    let tmp = modules_dir.join(format!(".{name}.ko.new"));
    if strip {
        cmd::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(ko)
                .arg(&tmp),
        )?;
    } else {
        fs::copy(ko, &tmp).map_err(io_err("copy to", &tmp))?;
    }
    let debug_dst = debug_dir.join(format!("{name}.ko"));
    fs::rename(&debug_tmp, &debug_dst).map_err(io_err("rename to", &debug_dst))?;
    let dst = modules_dir.join(format!("{name}.ko"));
    fs::rename(&tmp, &dst).map_err(io_err("rename to", &dst))
}

/// Removes each `<dir>/<name>.ko` whose name `keep` refuses.
fn remove_stale(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), KitError> {
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let path = e.map_err(io_err("list", dir))?.path();
        let stale = path.extension().is_some_and(|x| x == "ko")
            && path
                .file_stem()
                .is_some_and(|n| !keep(n.to_string_lossy().as_ref()));
        if stale {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// Built helpers: `(name, path)` in [`HELPERS`] order.
pub(crate) type BuiltHelpers = Vec<(&'static str, PathBuf)>;

/// Step 6: compile every [`HELPERS`] entry into `bin_dir` (each unless its stamp says it
/// is current). Returns `(name, path)` in [`HELPERS`] order.
pub(crate) fn build_helpers(bin_dir: &Path) -> Result<(BuiltHelpers, String), KitError> {
    fs::create_dir_all(bin_dir).map_err(io_err("create", bin_dir))?;
    let mut built = Vec::new();
    let mut out = Vec::new();
    for h in HELPERS {
        if build_helper(bin_dir, h)? {
            built.push(h.name);
        }
        out.push((h.name, bin_dir.join(h.name)));
    }
    let note = if built.is_empty() {
        format!("up to date ({} helpers)", HELPERS.len())
    } else {
        format!("built {} in {}", built.join(" "), bin_dir.display())
    };
    Ok((out, note))
}

/// Compiles one helper unless `<bin_dir>/.<name>.hash` holds its source hash; returns
/// whether it compiled.
pub(crate) fn build_helper(bin_dir: &Path, h: &Helper) -> Result<bool, KitError> {
    let out = bin_dir.join(h.name);
    let hash = Fnv::new().bytes(h.source.as_bytes()).hex();
    let stamp = bin_dir.join(format!(".{}.hash", h.name));
    if out.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok(false);
    }
    let src = bin_dir.join(h.source_name);
    fs::write(&src, h.source).map_err(io_err("write", &src))?;
    let tmp = bin_dir.join(format!("{}.tmp", h.name));
    cmd::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-o"])
            .arg(&tmp)
            .arg(&src),
    )?;
    fs::rename(&tmp, &out).map_err(io_err("move into", &out))?;
    write_atomic(&stamp, format!("{hash}\n").as_bytes(), None)?;
    Ok(true)
}

/// Sources of the mini frontend under `dir`: C, headers, assembly, the linker script and
/// the Makefile, sorted (build output and hidden entries skipped).
pub(crate) fn mini_frontend_sources(dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !e.file_type().map_err(io_err("stat", &path))?.is_file() {
            continue;
        }
        let source = [".c", ".h", ".S", ".ld"].iter().any(|x| name.ends_with(x));
        if source || name == "Makefile" {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the mini frontend from `<repo_root>/tests/guests/mini-frontend` into
/// `out_dir/mini-frontend.elf` with its Makefile (gcc, `-Wall -Wextra -Werror`), unless
/// `out_dir/.sources-hash` says its sources and the wire header are unchanged. Returns
/// the ELF's path and whether it was (re)built. Needs only gcc and make, not the rest of
/// the kit, so tests of the built-in VMM can call it alone; a lock file in `out_dir`
/// serialises concurrent builders.
pub fn build_mini_frontend(repo_root: &Path, out_dir: &Path) -> Result<(PathBuf, bool), KitError> {
    let src = repo_root.join(MINI_FRONTEND_DIR);
    let header = repo_root.join(ABI_HEADER);
    if !src.join("Makefile").is_file() {
        return Err(KitError::MissingFile {
            what: "the mini frontend's Makefile".into(),
            path: src.join("Makefile"),
        });
    }
    fs::create_dir_all(out_dir).map_err(io_err("create", out_dir))?;
    let lock_path = out_dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;

    let mut h = Fnv::new();
    for s in mini_frontend_sources(&src)?.iter().chain([&header]) {
        let name = s.strip_prefix(repo_root).unwrap_or(s);
        h.bytes(name.as_os_str().as_encoded_bytes())
            .bytes(&read(s)?);
    }
    let hash = h.hex();
    let elf = out_dir.join(MINI_FRONTEND_ELF);
    let stamp = out_dir.join(MODULES_STAMP);
    if elf.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok((elf, false));
    }
    let _ = fs::remove_file(&stamp);
    // -B: the hash decided; file times may lie (checkouts, clock steps, shared trees).
    cmd::run(
        Command::new("make")
            .arg("-B")
            .arg("-C")
            .arg(&src)
            .arg(format!("O={}", out_dir.display())),
    )?;
    if !elf.is_file() {
        return Err(KitError::MissingFile {
            what: "the mini frontend ELF after make".into(),
            path: elf,
        });
    }
    write_atomic(&stamp, format!("{hash}\n").as_bytes(), None)?;
    Ok((elf, true))
}
