//! Assembles the tiny guest (`tiny-guest/tiny.S`) into a flat 64 KiB image with binutils
//! (`as`, `ld`, `objcopy`). Without binutils the image is left empty and the benchmarks
//! and test that need it say so and skip: the rest of the crate still builds.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn assemble(src: &Path, out: &Path) -> Result<Vec<u8>, String> {
    let (obj, elf, bin) = (
        out.join("tiny.o"),
        out.join("tiny.elf"),
        out.join("tiny.flat"),
    );
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(src))?;
    run(Command::new("ld")
        .args(["-m", "elf_i386", "-Ttext=0", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj))?;
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&bin))?;
    let image = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    if image.len() != 0x10000 {
        return Err(format!("tiny guest is {} bytes, not 64 KiB", image.len()));
    }
    Ok(image)
}

fn main() {
    let src = Path::new("tiny-guest/tiny.S");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let image = assemble(src, &out).unwrap_or_else(|e| {
        println!("cargo:warning=tiny guest not assembled (its benchmarks will skip): {e}");
        Vec::new()
    });
    std::fs::write(out.join("tiny.bin"), image).expect("write tiny.bin");
}
