//! 64-bit direct boot: tiny long-mode ELF64 guests assembled at test time with `as`/`ld`,
//! and the loader's refusals of bad images. Guest tests skip loudly without /dev/kvm.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vesper_hypervisor::{HypervisorError, SharedBuffer, Stop, Vm};

mod common;
use common::asm::run;
use common::{kvm_available, MIB, RUN};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vesper-boot-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Assembles 64-bit GNU `as` (Intel syntax) `body` into a static ELF64 linked at
/// `0x400000` (code and data in one PT_LOAD), as the mini guests are.
fn elf_guest(dir: &Scratch, body: &str) -> PathBuf {
    let (src, obj, script, elf) = (
        dir.path("g.S"),
        dir.path("g.o"),
        dir.path("g.ld"),
        dir.path("g.elf"),
    );
    std::fs::write(
        &src,
        format!(".intel_syntax noprefix\n.code64\n.text\n.globl _start\n{body}\n{PUTS}"),
    )
    .unwrap();
    std::fs::write(
        &script,
        "ENTRY(_start)\nSECTIONS {\n . = 0x400000;\n .text : { *(.text*) *(.rodata*) *(.data*) *(.bss*) }\n /DISCARD/ : { *(.note*) *(.comment) }\n}\n",
    )
    .unwrap();
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src));
    run(Command::new("ld")
        .args(["-static", "-nostdlib", "--no-warn-rwx-segments", "-T"])
        .arg(&script)
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    elf
}

/// Console helpers every guest gets: `putc` (al), `puts` (rsi → NUL-terminated),
/// `puthex` (rax as 16 hex digits). They poll LSR for THR empty.
const PUTS: &str = r#"
putc:
    push rax
    mov dx, 0x3fd
1:  in al, dx
    test al, 0x20
    jz 1b
    pop rax
    mov dx, 0x3f8
    out dx, al
    ret
puts:
1:  lodsb
    test al, al
    jz 2f
    call putc
    jmp 1b
2:  ret
puthex:
    push rcx
    push rbx
    mov rbx, rax
    mov ecx, 16
1:  rol rbx, 4
    mov al, bl
    and al, 0xf
    add al, 0x30
    cmp al, 0x39
    jbe 2f
    add al, 0x27
2:  call putc
    dec ecx
    jnz 1b
    pop rbx
    pop rcx
    ret
"#;

fn vm(mem_size: u64, vcpus: u32, irqchip: bool) -> (Vm, SharedBuffer) {
    let out = SharedBuffer::new();
    let vm = common::vm(vcpus, mem_size, irqchip, Box::new(out.clone()));
    (vm, out)
}

/// Checks the entry state (RSI, RSP, CS, SS, IF), writes through the identity map at
/// 60 MiB, prints a line and exits with 0x31 — or 0x60.. naming the first wrong register.
const HELLO: &str = r#"
_start:
    mov r15, 0x31
    cmp rsi, 0x7000
    je 1f
    mov r15, 0x60
1:  cmp rsp, 0x8ff0
    je 1f
    mov r15, 0x61
1:  mov ax, cs
    cmp ax, 0x10
    je 1f
    mov r15, 0x62
1:  mov ax, ss
    cmp ax, 0x18
    je 1f
    mov r15, 0x63
1:  pushfq
    pop rax
    test rax, 0x200
    jz 1f
    mov r15, 0x64
1:  mov rax, 0x3c00000
    mov rbx, 0x1122334455667788
    mov [rax], rbx
    lea rsi, [rip + msg]
    call puts
    mov dx, 0x501
    mov rax, r15
    out dx, al
2:  hlt
    jmp 2b
msg: .asciz "Hello from long mode\n"
"#;

#[test]
fn elf64_guest_starts_in_long_mode_prints_and_exits_and_reset_returns_there() {
    if !kvm_available("elf64 hello") {
        return;
    }
    let dir = Scratch::new();
    let elf = elf_guest(&dir, HELLO);
    let (mut vm, out) = vm(64 * MIB, 1, false);
    let info = vm.boot_elf64(&elf, "").expect("boot");
    assert_eq!(info.entry, 0x40_0000);
    assert_eq!(info.kernel.0, 0x40_0000);

    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0x31), "{:?}", report.vcpus);
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "Hello from long mode\n"
    );
    let regs = &report.vcpus[0];
    assert_eq!(regs.cr3, 0x9000);
    assert_eq!(regs.efer & 0x500, 0x500, "EFER.LME|LMA");
    let mut word = [0u8; 8];
    vm_memory::Bytes::read_slice(vm.memory(), &mut word, vm_memory::GuestAddress(0x3c0_0000))
        .unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x1122_3344_5566_7788);

    // A reset goes back to the 64-bit entry: the same run again.
    vm.reset().expect("reset");
    let again = vm.run(RUN).expect("second run");
    assert_eq!(again.stop, Stop::PowerOff(0x31));
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "Hello from long mode\nHello from long mode\n"
    );
    assert_eq!(vm.unmapped_accesses().total(), 0);
}

/// Prints the zero page's e820 map (" addr+size:type" per entry, at most 128) and the
/// command line it points to, then exits with 0x42.
const ZERO_PAGE_REPORTER: &str = r#"
_start:
    mov r12, rsi
    lea rsi, [rip + m_e820]
    call puts
    movzx r13d, byte ptr [r12 + 0x1e8]
    lea rbx, [r12 + 0x2d0]
    cmp r13d, 128
    jbe 1f
    mov r13d, 128
1:  test r13d, r13d
    jz 2f
    mov al, 0x20
    call putc
    mov rax, [rbx]
    call puthex
    mov al, 0x2b
    call putc
    mov rax, [rbx + 8]
    call puthex
    mov al, 0x3a
    call putc
    mov eax, [rbx + 16]
    call puthex
    add rbx, 20
    dec r13d
    jmp 1b
2:  lea rsi, [rip + m_cmd]
    call puts
    mov esi, dword ptr [r12 + 0x228]
    call puts
    mov al, 0x0a
    call putc
    mov dx, 0x501
    mov al, 0x42
    out dx, al
3:  hlt
    jmp 3b
m_e820: .asciz "e820:"
m_cmd: .asciz "\ncmdline:"
"#;

#[test]
fn elf64_guest_reads_the_e820_map_and_command_line_from_the_zero_page() {
    if !kvm_available("zero page") {
        return;
    }
    let dir = Scratch::new();
    let elf = elf_guest(&dir, ZERO_PAGE_REPORTER);
    let (mut vm, out) = vm(64 * MIB, 1, false);
    vm.boot_elf64(&elf, "console=ttyS0 vesper.test=1")
        .expect("boot");
    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0x42));
    // RAM only: conventional memory below the legacy window, then 1 MiB up to 64 MiB.
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "e820: 0000000000000000+000000000009fc00:0000000000000001 \
         0000000000100000+0000000003f00000:0000000000000001\n\
         cmdline:console=ttyS0 vesper.test=1\n"
    );
}

/// Each vCPU stores 0x1000 | hypervisor-bit << 8 | its CPUID APIC id at 0x500000 + 8 × id;
/// the BSP waits (bounded) for vCPU 1's store, then exits with 0x33.
const SMP: &str = r#"
_start:
    mov eax, 1
    xor ecx, ecx
    cpuid
    shr ebx, 24
    shr ecx, 31
    shl ecx, 8
    mov eax, ebx
    or eax, ecx
    or eax, 0x1000
    lea rdi, [rbx * 8 + 0x500000]
    mov [rdi], rax
    test ebx, ebx
    jnz 3f
    mov ecx, 100000000
1:  cmp qword ptr [0x500008], 0
    jne 2f
    pause
    dec ecx
    jnz 1b
2:  mov dx, 0x501
    mov al, 0x33
    out dx, al
3:  hlt
    jmp 3b
"#;

#[test]
fn every_vcpu_enters_at_the_elf_entry_with_its_own_apic_id_in_cpuid() {
    if !kvm_available("smp cpuid") {
        return;
    }
    let dir = Scratch::new();
    let elf = elf_guest(&dir, SMP);
    // With the irqchip, vCPU 1 would otherwise wait for an INIT/SIPI.
    let (mut vm, _out) = vm(16 * MIB, 2, true);
    vm.boot_elf64(&elf, "").expect("boot");
    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0x33));
    let slot = |i: u64| {
        let mut w = [0u8; 8];
        vm_memory::Bytes::read_slice(
            vm.memory(),
            &mut w,
            vm_memory::GuestAddress(0x50_0000 + 8 * i),
        )
        .unwrap();
        u64::from_le_bytes(w)
    };
    assert_eq!((slot(0), slot(1)), (0x1100, 0x1101));
}

#[test]
fn elf64_boot_refuses_bad_images_with_named_errors() {
    if !kvm_available("bad elf") {
        return;
    }
    let dir = Scratch::new();
    let (mut vm, _out) = vm(8 * MIB, 1, false);
    let not_kernel = dir.write("notes.txt", b"just some text, not a kernel at all\n");
    let e = vm.boot_elf64(&not_kernel, "").unwrap_err();
    assert!(matches!(e, HypervisorError::NotAKernel { .. }), "{e}");
    assert!(e.to_string().contains("notes.txt"), "{e}");

    let e = vm.boot_elf64(&dir.path("missing.elf"), "").unwrap_err();
    assert!(matches!(e, HypervisorError::ImageRead { .. }), "{e}");

    // A 3 GiB sparse file is refused before it is read.
    let huge = dir.path("disk.img");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let e = vm.boot_elf64(&huge, "").unwrap_err();
    assert!(e.to_string().contains("larger than 2 GiB"), "{e}");

    let elf = std::fs::read(elf_guest(&dir, HELLO)).unwrap();
    let mut arm = elf.clone();
    arm[0x12..0x14].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let e = vm.boot_elf64(&dir.write("arm.elf", &arm), "").unwrap_err();
    assert!(
        matches!(e, HypervisorError::WrongArchitecture { machine: 183, .. }),
        "{e}"
    );

    let cut = dir.write("cut.elf", &elf[..elf.len() / 2]);
    let e = vm.boot_elf64(&cut, "").unwrap_err();
    assert!(matches!(e, HypervisorError::TruncatedImage { .. }), "{e}");

    // Its PT_LOAD moved onto the zero page.
    let mut low = elf.clone();
    let phoff = u64::from_le_bytes(low[0x20..0x28].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes([low[0x38], low[0x39]]) as usize;
    let load = (0..phnum)
        .map(|i| phoff + i * 0x38)
        .find(|&at| low[at..at + 4] == 1u32.to_le_bytes())
        .expect("a PT_LOAD");
    low[load + 24..load + 32].copy_from_slice(&0x7000u64.to_le_bytes()); // p_paddr
    let e = vm.boot_elf64(&dir.write("low.elf", &low), "").unwrap_err();
    assert!(
        matches!(
            e,
            HypervisorError::SegmentOverlapsBoot { start: 0x7000, .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("low.elf"), "{e}");

    // The guest is linked at 4 MiB: a 2 MiB VM has no RAM there.
    let (mut small, _o) = self::vm(2 * MIB, 1, false);
    let e = small.boot_elf64(&dir.write("g.elf", &elf), "").unwrap_err();
    assert!(
        matches!(e, HypervisorError::SegmentOutsideRam { .. }),
        "{e}"
    );

    let e = vm
        .boot_elf64(&dir.write("ok.elf", &elf), &"x".repeat(5000))
        .unwrap_err();
    assert!(
        matches!(e, HypervisorError::CmdlineTooLong { len: 5000, .. }),
        "{e}"
    );
}

/// A bzImage shell: boot sector + one setup sector + `payload` bytes, protocol 2.15,
/// 64-bit entry, `init_size` bytes needed from 1 MiB, command lines up to 2047 bytes.
fn fake_bzimage(init_size: u32, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 2 * 512 + payload];
    f[0x1f1] = 1; // setup_sects
    f[0x1f4..0x1f8].copy_from_slice(&(payload as u32).div_ceil(16).to_le_bytes()); // syssize
    f[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    f[0x211] = 1; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: 64-bit entry
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    // Protected-mode code starts at file offset 1024 and must land at 1 MiB.
    f[1024..1028].copy_from_slice(b"PMOD");
    f
}

fn read_u32(vm: &Vm, addr: u64) -> u32 {
    let mut w = [0u8; 4];
    vm_memory::Bytes::read_slice(vm.memory(), &mut w, vm_memory::GuestAddress(addr)).unwrap();
    u32::from_le_bytes(w)
}

#[test]
fn bzimage_initramfs_and_cmdline_land_where_the_zero_page_says() {
    if !kvm_available("bzimage layout") {
        return;
    }
    let dir = Scratch::new();
    let kernel = dir.write("bzImage", &fake_bzimage(4 << 20, 4096));
    let initrd = dir.write("initrd.cpio", &[0x5a; 10_000]);
    let (mut vm, _out) = vm(64 * MIB, 1, true);
    let info = vm
        .boot_linux(vesper_hypervisor::LinuxBoot {
            kernel: &kernel,
            initramfs: Some(&initrd),
            cmdline: "console=ttyS0 quiet",
        })
        .expect("boot");
    assert_eq!(info.entry, 0x10_0200);
    // Top of RAM, page-aligned: 64 MiB - 12 KiB.
    assert_eq!(info.initramfs, Some((64 * MIB - 0x3000, 10_000)));
    assert_eq!(read_u32(&vm, 0x10_0000), u32::from_le_bytes(*b"PMOD"));
    assert_eq!(read_u32(&vm, 64 * MIB - 0x3000), 0x5a5a_5a5a);
    let zp = 0x7000;
    assert_eq!(read_u32(&vm, zp + 0x202), u32::from_le_bytes(*b"HdrS"));
    assert_eq!(read_u32(&vm, zp + 0x210) & 0xff, 0xff, "type_of_loader");
    assert_eq!(
        read_u32(&vm, zp + 0x218),
        (64 * MIB - 0x3000) as u32,
        "ramdisk_image"
    );
    assert_eq!(read_u32(&vm, zp + 0x21c), 10_000, "ramdisk_size");
    assert_eq!(read_u32(&vm, zp + 0x228), 0x20000, "cmd_line_ptr");
    assert_eq!(read_u32(&vm, zp + 0x1e8) & 0xff, 2, "e820 entries");
    let mut cmdline = [0u8; 20];
    vm_memory::Bytes::read_slice(vm.memory(), &mut cmdline, vm_memory::GuestAddress(0x20000))
        .unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 quiet\0");
}

#[test]
fn linux_boot_refuses_bad_kernels_initramfs_and_command_lines_by_name() {
    if !kvm_available("bad linux inputs") {
        return;
    }
    let dir = Scratch::new();
    let kernel = dir.write("bzImage", &fake_bzimage(4 << 20, 4096));
    let boot = |vm: &mut Vm,
                kernel: &std::path::Path,
                initramfs: Option<&std::path::Path>,
                cmdline: &str| {
        vm.boot_linux(vesper_hypervisor::LinuxBoot {
            kernel,
            initramfs,
            cmdline,
        })
        .unwrap_err()
    };
    let (mut vm, _o) = vm(16 * MIB, 1, true);

    let junk = dir.write("kernel.txt", &[b'x'; 4096]);
    let e = boot(&mut vm, &junk, None, "");
    assert!(matches!(e, HypervisorError::NotAKernel { .. }), "{e}");
    assert!(e.to_string().contains("kernel.txt"), "{e}");

    let full = fake_bzimage(4 << 20, 4096);
    let cut = dir.write("cut-bzImage", &full[..full.len() - 1000]);
    let e = boot(&mut vm, &cut, None, "");
    assert!(matches!(e, HypervisorError::TruncatedImage { .. }), "{e}");
    assert!(e.to_string().contains("cut-bzImage"), "{e}");

    let missing = dir.path("no-such-initrd");
    let e = boot(&mut vm, &kernel, Some(&missing), "");
    assert!(matches!(e, HypervisorError::InitramfsRead { .. }), "{e}");
    assert!(e.to_string().contains("no-such-initrd"), "{e}");
    let e = boot(&mut vm, &kernel, Some(&dir.0), "");
    assert!(matches!(e, HypervisorError::InitramfsRead { .. }), "{e}");

    // 16 MiB of RAM, the kernel needs up to 5 MiB: 11 MiB are free, 12 MiB do not fit.
    let big = dir.path("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();
    let e = boot(&mut vm, &kernel, Some(&big), "");
    assert!(
        matches!(e, HypervisorError::InitramfsTooLarge { room, .. } if room == 11 * MIB),
        "{e}"
    );
    assert!(e.to_string().contains("big.cpio"), "{e}");

    let e = boot(&mut vm, &kernel, None, &"y".repeat(2048));
    assert!(
        matches!(
            e,
            HypervisorError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{e}"
    );

    let huge = dir.write("huge-bzImage", &fake_bzimage(64 << 20, 4096));
    let e = boot(&mut vm, &huge, None, "");
    assert!(matches!(e, HypervisorError::KernelTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("huge-bzImage"), "{e}");

    let (mut plain, _o) = self::vm(16 * MIB, 1, false);
    let e = boot(&mut plain, &kernel, None, "");
    assert!(matches!(e, HypervisorError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("with_irqchip"), "{e}");
}

#[test]
fn linux_boot_takes_an_elf_kernel_at_its_physical_addresses_and_enters_it_in_long_mode() {
    if !kvm_available("linux elf") {
        return;
    }
    let dir = Scratch::new();
    let elf = elf_guest(&dir, HELLO);
    let initrd = dir.write("initrd", &[1; 4096]);
    let (mut vm, out) = vm(32 * MIB, 1, true);
    let info = vm
        .boot_linux(vesper_hypervisor::LinuxBoot {
            kernel: &elf,
            initramfs: Some(&initrd),
            cmdline: "console=ttyS0",
        })
        .expect("boot");
    assert_eq!(info.entry, 0x40_0000);
    assert_eq!(info.initramfs, Some((32 * MIB - 4096, 4096)));
    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0x31));
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "Hello from long mode\n"
    );
}

/// Each vCPU that runs adds 1 at 0x500000 (locked); vCPU 0 then waits (bounded) for a
/// second vCPU's add and exits with the count.
const COUNT_VCPUS: &str = r#"
_start:
    lock inc qword ptr [0x500000]
    mov eax, 1
    cpuid
    shr ebx, 24
    jnz 3f
    mov ecx, 300000
1:  cmp qword ptr [0x500000], 2
    jae 2f
    pause
    dec ecx
    jnz 1b
2:  mov rax, [0x500000]
    mov dx, 0x501
    out dx, al
3:  hlt
    jmp 3b
"#;

#[test]
fn linux_boot_starts_only_the_bootstrap_vcpu_and_lists_all_in_an_mp_table() {
    if !kvm_available("linux smp") {
        return;
    }
    let dir = Scratch::new();
    let elf = elf_guest(&dir, COUNT_VCPUS);
    // A plain ELF64 guest: every vCPU runs from the entry.
    let (mut vm2, _o) = vm(16 * MIB, 2, true);
    vm2.boot_elf64(&elf, "").expect("boot elf64");
    assert_eq!(vm2.run(RUN).expect("run").stop, Stop::PowerOff(2));
    // Linux: vCPU 1 waits for the kernel's INIT/SIPI; the MP table lists both.
    let (mut vm, _o) = vm(16 * MIB, 2, true);
    vm.boot_linux(vesper_hypervisor::LinuxBoot {
        kernel: &elf,
        initramfs: None,
        cmdline: "",
    })
    .expect("boot linux");
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(1));
    assert_eq!(read_u32(&vm, 0xf_0000), u32::from_le_bytes(*b"_MP_"));
    assert_eq!(read_u32(&vm, 0xf_0010), u32::from_le_bytes(*b"PCMP"));
    // A reset goes back to the same split: vCPU 1 waits again.
    vm.reset().expect("reset");
    vm.load(0x50_0000, &[0; 8]).expect("clear the count");
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(1));
}

#[test]
fn ram_beyond_3_gib_continues_at_4_gib_and_the_e820_map_says_so() {
    if !kvm_available("split ram") {
        return;
    }
    const GIB: u64 = 1 << 30;
    let dir = Scratch::new();
    let elf = elf_guest(&dir, ZERO_PAGE_REPORTER);
    let (mut vm, out) = vm(3 * GIB + 64 * MIB, 1, false);
    vm.load(4 * GIB + 64 * MIB - 8, &[1; 8])
        .expect("RAM at the top of the range above 4 GiB");
    let e = vm.load(3 * GIB, &[1]).unwrap_err();
    assert!(matches!(e, HypervisorError::LoadOutOfRange { .. }), "{e}");
    vm.boot_elf64(&elf, "").expect("boot");
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(0x42));
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "e820: 0000000000000000+000000000009fc00:0000000000000001 \
         0000000000100000+00000000bff00000:0000000000000001 \
         0000000100000000+0000000004000000:0000000000000001\ncmdline:\n"
    );
}
