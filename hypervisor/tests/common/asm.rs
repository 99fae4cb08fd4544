//! Guests written in GNU assembler, assembled at test time with `as` and `ld` into a
//! flat image (`as`, `ld` and `objcopy` from binutils must be installed).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Real mode → 32-bit flat protected mode, at the top of every guest: cs = 0x08, data
/// segments 0x10 (base 0, 4 GiB), stack at 0x8000, interrupts off. The guest's own code
/// follows at the label `main` (which it must define).
pub const PROTECTED_MODE_PRELUDE: &str = r#"
    .intel_syntax noprefix
    .code16
    .globl _start
_start:
    cli
    lgdt [gdt_desc]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    ljmp 0x08, offset pm_entry
    .code32
pm_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, 0x8000
    jmp main
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
gdt_desc:
    .word 23
    .long gdt
"#;

/// Runs a binutils command (`as`, `ld`, `objcopy`); panics with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("binutils (as, ld, objcopy) must be installed");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles 32-bit `source` (which starts with `PROTECTED_MODE_PRELUDE` or its own
/// `_start`) linked at `base`, and returns the flat image.
pub fn assemble(source: &str, base: u64) -> Vec<u8> {
    assemble_as(source, base, false)
}

/// As `assemble`, for 64-bit code (`.code64`).
pub fn assemble64(source: &str, base: u64) -> Vec<u8> {
    assemble_as(source, base, true)
}

fn assemble_as(source: &str, base: u64, long_mode: bool) -> Vec<u8> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir: PathBuf = std::env::temp_dir().join(format!("vesper-asm-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj, elf, bin) = (
        dir.join("g.S"),
        dir.join("g.o"),
        dir.join("g.elf"),
        dir.join("g.bin"),
    );
    std::fs::write(&src, source).unwrap();
    let (as_flag, ld_emulation) = if long_mode {
        ("--64", "elf_x86_64")
    } else {
        ("--32", "elf_i386")
    };
    run(Command::new("as")
        .arg(as_flag)
        .arg("-o")
        .arg(&obj)
        .arg(&src));
    run(Command::new("ld")
        .args(["-m", ld_emulation, "-nostdlib", "-N"])
        .arg(format!("-Ttext={base:#x}"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&bin));
    let image = std::fs::read(&bin).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// What a guest reports when it is set up and waiting.
pub const READY: u32 = 0x5244_5952; // "RYDR"
/// The interrupt vector the guests' MSI-X handler sits on.
pub const MSI_VECTOR: u32 = 0x40;

/// Routines for 32- or 64-bit guests (they clobber edx):
/// - `pci_read32`: eax = config address → eax = value;
/// - `pci_write32`: eax = config address, ebx = value;
/// - `pci_write16_hi`: eax = config address, bx = the word at address + 2;
/// - `report`: eax → `super::REPORT_PORT`;
/// - `poweroff`: debug-exit with code 0.
pub const PCI_LIB: &str = r#"
pci_read32:
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    ret
pci_write32:
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov eax, ebx
    out dx, eax
    ret
pci_write16_hi:
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfe
    mov ax, bx
    out dx, ax
    ret
report:
    mov dx, 0x7000
    out dx, eax
    ret
poweroff:
    mov dx, 0x501
    mov al, 0
    out dx, al
    cli
    hlt
"#;

/// 32-bit routines:
/// - `lapic_on`: loads the IDT (vector `MSI_VECTOR` → the guest's `handler`, all others
///   → report 0xbad and power off with 1) and software-enables the LAPIC;
/// - `eoi`: ends the LAPIC interrupt.
pub const APIC_LIB: &str = r#"
lapic_on:
    lidt [idt_desc]
    mov dword ptr [0xfee000f0], 0x1ff
    mov dword ptr [0xfee00080], 0
    ret
eoi:
    mov dword ptr [0xfee000b0], 0
    ret
unexpected:
    mov eax, 0xbad
    call report
    mov dx, 0x501
    mov al, 1
    out dx, al
    cli
    hlt
    .balign 8
idt:
    .rept 0x40
    .word unexpected, 0x08
    .byte 0, 0x8e
    .word 0
    .endr
    .word handler, 0x08
    .byte 0, 0x8e
    .word 0
idt_desc:
    .word 0x41*8-1
    .long idt
"#;

/// A protected-mode guest: the prelude, the libraries, then `body` (which defines `main`
/// and `handler`), linked at `base`.
pub fn guest(body: &str, base: u64) -> Vec<u8> {
    assemble(
        &format!("{PROTECTED_MODE_PRELUDE}{PCI_LIB}{APIC_LIB}{body}"),
        base,
    )
}

/// A 64-bit guest for `Vm::set_long_mode_entry(base)`: `PCI_LIB`, then `body` (which
/// defines `main`), linked at `base`.
pub fn guest64(body: &str, base: u64) -> Vec<u8> {
    let start = ".intel_syntax noprefix\n.code64\n.globl _start\n_start:\n    jmp main\n";
    assemble64(&format!("{start}{PCI_LIB}{body}"), base)
}
