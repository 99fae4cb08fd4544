//! Other tools read our vmcores: gdb and readelf; and the layout is what VMCOREINFO
//! and the symbols say.

use std::process::Command;

use super::*;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn gdb_reads_image_and_direct_map_addresses_and_registers_from_the_dump() {
    if !have("gdb") {
        crate::memory::fake::say_skipped("the gdb test", "no gdb on PATH");
        return;
    }
    let mut g = guest();
    // A known pattern at the start of the image and of another image page.
    let p = g.page_mut(MIB);
    p[..16].copy_from_slice(&[
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let opts = DumpOptions {
        cpus: vec![cpu(0)],
        max_bytes: None,
    };
    // A non-zero phys_base, as a relocated kernel has.
    let kl = KernelLayout {
        phys_base: MIB,
        image: Some(MIB..MIB + 256 * KIB),
        ..layout()
    };
    let sum = write_vmcore(
        &g,
        &g.ranges(),
        &info(),
        Some(&kl),
        dir.path(),
        "g.vmcore",
        &opts,
    )
    .unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("core-file {}", sum.path.display()))
        .args(["-ex", "x/2gx 0xffffffff80000000"])
        .args(["-ex", &format!("x/2gx {:#x}", DIRECT + MIB)])
        .args(["-ex", &format!("x/1gx {:#x}", START_KERNEL_MAP + 60 * PAGE)])
        .args(["-ex", &format!("x/1gx {:#x}", START_KERNEL_MAP + 16 * PAGE)])
        .args(["-ex", "p/x $rip", "-ex", "p/x $rsp"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want_image = "0xffffffff80000000:\t0x1122334455667788\t0x99aabbccddeeff00".to_string();
    let want_direct = format!(
        "{:#x}:\t0x1122334455667788\t0x99aabbccddeeff00",
        DIRECT + MIB
    );
    // phys_base is 1 MiB: image page 60 is guest page 316; 16 is 272, a zero page.
    let want_page = format!(
        "{:#x}:\t{:#018x}",
        START_KERNEL_MAP + 60 * PAGE,
        pattern(MIB + 60 * PAGE)
    );
    let want_zero = format!("{:#x}:\t0x0000000000000000", START_KERNEL_MAP + 16 * PAGE);
    for want in [
        &want_image,
        &want_direct,
        &want_page,
        &want_zero,
        &format!("$1 = {:#x}", cpu(0).rip),
        &format!("$2 = {:#x}", cpu(0).rsp),
    ] {
        assert!(
            stdout.contains(want.as_str()),
            "gdb did not print {want:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn readelf_reads_the_headers_and_notes_without_warnings() {
    if !have("readelf") {
        crate::memory::fake::say_skipped("the readelf test", "no readelf on PATH");
        return;
    }
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let opts = DumpOptions {
        cpus: vec![cpu(0), cpu(1)],
        max_bytes: None,
    };
    let sum = write_vmcore(
        &g,
        &g.ranges(),
        &info(),
        Some(&layout()),
        dir.path(),
        "r",
        &opts,
    )
    .unwrap();
    let out = Command::new("readelf")
        .args(["-h", "-l", "-n", "-W"])
        .arg(&sum.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    assert!(
        stdout.contains("CORE (Core file)") && stdout.contains("Advanced Micro Devices X86-64"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("NT_PRSTATUS").count(), 2, "{stdout}");
    assert!(stdout.contains("VMCOREINFO"), "{stdout}");
    assert_eq!(stdout.matches("  LOAD ").count(), sum.segments, "{stdout}");
}

#[test]
fn the_layout_comes_from_vmcoreinfo_and_symbols() {
    let info = VmcoreInfo::parse(b"OSRELEASE=x\nNUMBER(phys_base)=-415236096\n").unwrap();
    let text = 0xffff_ffff_a800_0000u64;
    let syms = |n: &str| match n {
        "_text" => Some(text),
        "_end" => Some(text + 40 * MIB + 123),
        "page_offset_base" => Some(0xffff_ffff_b000_0000),
        _ => None,
    };
    let kl = KernelLayout::from_parts(&info, syms, |a| {
        (a == 0xffff_ffff_b000_0000).then_some(0xff2b_4000_0000_0000)
    });
    let phys = (text - START_KERNEL_MAP).wrapping_add(-415_236_096i64 as u64);
    assert_eq!(kl.page_offset_base, Some(0xff2b_4000_0000_0000));
    assert_eq!(kl.phys_base, -415_236_096i64 as u64);
    assert_eq!(kl.image, Some(phys..phys + 40 * MIB + 123));
    // The alias lands back on _text.
    assert_eq!(START_KERNEL_MAP + phys.wrapping_sub(kl.phys_base), text);
    // No variable: the fixed base; an implausible one or a huge image: none.
    let kl = KernelLayout::from_parts(&info, |_| None, |_| None);
    assert_eq!(
        (kl.page_offset_base, kl.image),
        (Some(PAGE_OFFSET_L4), None)
    );
    let bad = |n: &str| match n {
        "_text" => Some(START_KERNEL_MAP),
        "_end" => Some(START_KERNEL_MAP + MAX_IMAGE + PAGE),
        "page_offset_base" => Some(1),
        _ => None,
    };
    let kl = KernelLayout::from_parts(&info, bad, |_| Some(0x1000));
    assert_eq!((kl.page_offset_base, kl.image), (None, None));
}
