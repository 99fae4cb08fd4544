//! `vesper-guest-kit [build] [--no-disk] [--kit-dir DIR]` builds (or reuses) the guest kit
//! and prints a summary; `vesper-guest-kit path` prints the kit directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vesper_guest_kit::{default_kit_dir, EnsureOptions, Kit};

#[derive(Parser)]
#[command(
    name = "vesper-guest-kit",
    about = "Build and cache Vesper's Linux test guest (kernel, modules, initramfs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Kit directory (default: $VESPER_KIT_DIR or <repo>/.vesper-kit).
    #[arg(long, global = true)]
    kit_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build or reuse everything and print the manifest summary (the default).
    Build {
        /// Ask apt for the newest kernel even if a usable one is cached.
        #[arg(long)]
        refresh_kernel: bool,
        /// Repository root with guest-module/, probes/, tests/modules/.
        #[arg(long)]
        repo_root: Option<PathBuf>,
        /// Do not build the Debian disk guest (an up-to-date one is still recorded).
        #[arg(long)]
        no_disk: bool,
    },
    /// Print the kit directory.
    Path,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.kit_dir.unwrap_or_else(default_kit_dir);
    let (refresh_kernel, repo_root, skip_disk) = match cli.command {
        Some(Cmd::Path) => {
            println!("{}", dir.display());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Build {
            refresh_kernel,
            repo_root,
            no_disk,
        }) => (refresh_kernel, repo_root, no_disk),
        None => (false, None, false),
    };
    let opts = EnsureOptions {
        kit_dir: Some(dir),
        repo_root,
        refresh_kernel,
        quiet: false,
        skip_disk,
    };
    match Kit::ensure(&opts) {
        Ok(kit) => {
            print_summary(&kit);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vesper-guest-kit: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(kit: &Kit) {
    println!("kit dir      {}", kit.dir.display());
    println!("release      {}", kit.release);
    println!("kernel       {}", kit.kernel.display());
    println!("initramfs    {}", kit.initramfs.display());
    println!("kdir         {}", kit.kdir.display());
    println!("bench-insmod {}", kit.bench_insmod.display());
    println!("svc          {}", kit.svc.display());
    println!("hog          {}", kit.hog.display());
    println!("mini front   {}", kit.mini_frontend.display());
    println!("accel        {}", kit.accel);
    match (&kit.debug_vmlinux, &kit.debug_vmlinux_missing) {
        (Some(v), _) => println!("vmlinux      {} (debug symbols)", v.display()),
        (None, why) => println!("vmlinux      none: {}", why.as_deref().unwrap_or("unknown")),
    }
    match (&kit.debug_modules_dir, &kit.debug_modules_missing) {
        (Some(d), _) => println!("module debug {} (a .ko with DWARF per module)", d.display()),
        (None, why) => println!("module debug none: {}", why.as_deref().unwrap_or("unknown")),
    }
    if kit.modules.is_empty() {
        println!("modules      (none built yet)");
    }
    for (name, path) in &kit.modules {
        println!("module       {name:<20} {}", path.display());
    }
    if let Some(deb) = &kit.frontend_deb {
        println!("frontend deb {} (DKMS)", deb.display());
    }
    match (&kit.debian_disk, &kit.debian_disk_missing) {
        (Some(d), _) => println!("debian disk  {} (Debian 12, SeaBIOS + GRUB)", d.display()),
        (None, why) => println!("debian disk  none: {}", why.as_deref().unwrap_or("unknown")),
    }
    println!("manifest     {}", kit.dir.join("manifest.json").display());
    println!(
        "boot with    qemu-system-x86_64 -accel {} -m 512 -nographic -no-reboot -kernel {} -initrd {} -append 'console=ttyS0 panic=-1 vesper.mode=freeze'",
        kit.accel,
        kit.kernel.display(),
        kit.initramfs.display()
    );
    if let Some(d) = &kit.debian_disk {
        println!(
            "boot disk    qemu-system-x86_64 -accel {} -m 1024 -nographic -snapshot -drive file={},if=virtio -netdev user,id=n0 -device virtio-net-pci,netdev=n0",
            kit.accel,
            d.display()
        );
    }
}
