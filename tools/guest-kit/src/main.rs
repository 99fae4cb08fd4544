//! `vesper-guest-kit [build] [--kit-dir DIR]` builds (or reuses) the guest kit and prints a
//! summary; `vesper-guest-kit path` prints the kit directory.

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
    },
    /// Print the kit directory.
    Path,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.kit_dir.unwrap_or_else(default_kit_dir);
    let (refresh_kernel, repo_root) = match cli.command {
        Some(Cmd::Path) => {
            println!("{}", dir.display());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Build {
            refresh_kernel,
            repo_root,
        }) => (refresh_kernel, repo_root),
        None => (false, None),
    };
    let opts = EnsureOptions {
        kit_dir: Some(dir),
        repo_root,
        refresh_kernel,
        quiet: false,
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
    println!("manifest     {}", kit.dir.join("manifest.json").display());
    println!(
        "boot with    qemu-system-x86_64 -accel {} -m 512 -nographic -no-reboot -kernel {} -initrd {} -append 'console=ttyS0 panic=-1 vesper.mode=freeze'",
        kit.accel,
        kit.kernel.display(),
        kit.initramfs.display()
    );
}
