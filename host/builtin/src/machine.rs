//! One guest in the builtin VMM: build, boot, run on a thread, reboot in place.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vesper_hypervisor::pvpanic::{PvPanic, PvPanicEvent, PVPANIC_PORT};
use vesper_hypervisor::{
    BusRange, DebugHandle, Stop, StopHandle, VcpuThreads, VesperConfig, Vm, VmConfig,
};
use vesper_shmem::SharedRegion;

use crate::{BuiltinError, BuiltinTransport, ConsoleInput};

/// Largest shared region a builtin machine gets (its BAR must fit the PCI hole).
const MAX_REGION: u64 = 256 << 20;
const MIB: u64 = 1 << 20;

/// What the guest boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootImage {
    /// A Linux kernel (bzImage or ELF vmlinux), its initramfs and command line.
    Linux {
        /// The kernel.
        kernel: PathBuf,
        /// The initramfs.
        initramfs: Option<PathBuf>,
        /// The command line.
        cmdline: String,
    },
    /// A plain static ELF64 entered in long mode (e.g. the test kit's mini frontend).
    Elf {
        /// The image.
        path: PathBuf,
        /// The command line it finds through the zero page.
        cmdline: String,
    },
}

/// A machine to build.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// Its name (the shared region's name, logs).
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// What it boots.
    pub boot: BootImage,
    /// Size of the shared region: a power of two, at least the ABI's minimum.
    pub region_size: u64,
    /// File the console output is appended to.
    pub console_log: PathBuf,
    /// Reboot in place when the guest resets (otherwise a reset ends the machine).
    pub allow_reboot: bool,
}

/// Something the machine saw, reported on the thread that saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest reported a panic through pvpanic.
    GuestPanicked,
    /// The guest is about to run its crash kernel (pvpanic).
    CrashLoaded,
    /// The guest reset itself; `rebooted` says whether it was booted again in place.
    Reset {
        /// Booted again.
        rebooted: bool,
    },
}

/// Receives machine events. Called on the VM's threads: must not block.
pub type EventSink = Arc<dyn Fn(MachineEvent) + Send + Sync>;

/// How a machine ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEnd {
    /// The guest powered off (debug-exit port) with this code.
    PowerOff(u8),
    /// The host stopped it.
    Stopped,
    /// Every vCPU halted with interrupts off: nothing can wake it.
    Halted,
    /// The guest reset and rebooting in place was not allowed.
    Reset,
    /// The VMM failed; the message says how (an unexpected exit carries registers).
    Failed(String),
}

impl std::fmt::Display for MachineEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff(code) => write!(f, "guest powered off (code {code})"),
            Self::Stopped => f.write_str("stopped by the host"),
            Self::Halted => f.write_str("every vCPU halted"),
            Self::Reset => f.write_str("guest reset (reboot not allowed)"),
            Self::Failed(why) => write!(f, "VMM failure: {why}"),
        }
    }
}

/// A running machine. Dropping it stops the VM and waits for its thread.
pub struct Machine {
    name: String,
    stop: StopHandle,
    console: ConsoleInput,
    debug: DebugHandle,
    vcpu_threads: VcpuThreads,
    boot: BootImage,
    thread: Option<JoinHandle<MachineEnd>>,
}

impl Machine {
    /// Builds the machine, boots `spec.boot` and starts it on its own thread. Returns
    /// the machine and the transport to its Vesper device.
    pub fn start(
        spec: &MachineSpec,
        events: EventSink,
    ) -> Result<(Machine, BuiltinTransport), BuiltinError> {
        check_spec(spec)?;
        let region =
            SharedRegion::create(&spec.name, spec.region_size).map_err(BuiltinError::Region)?;
        // This host owns guest RAM: the guest may grant frames of it instead of copying
        // through the region (PROTOCOL.md, grants of guest RAM frames).
        region
            .offer_host_features(vesper_shared_abi::HOST_FEATURE_GUEST_FRAMES)
            .map_err(BuiltinError::Region)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(|source| BuiltinError::ConsoleLog {
                path: spec.console_log.clone(),
                source,
            })?;
        let mut vm = Vm::with_irqchip(
            VmConfig {
                vcpus: spec.vcpus,
                mem_size: u64::from(spec.memory_mib) * MIB,
            },
            Box::new(log),
        )?;
        // The VMM places the BARs in the PCI hole; the guest may move them.
        let device = vm.add_vesper_device(VesperConfig::auto(1, region.fd(), spec.region_size))?;
        let sink = events.clone();
        let pvpanic = PvPanic::new(Box::new(move |e| {
            sink(match e {
                PvPanicEvent::Panicked => MachineEvent::GuestPanicked,
                PvPanicEvent::CrashLoaded => MachineEvent::CrashLoaded,
            })
        }));
        vm.register_pio(
            BusRange::new(u64::from(PVPANIC_PORT), 1)?,
            Arc::new(Mutex::new(pvpanic)),
        )?;
        boot(&mut vm, &spec.boot)?;
        let frames = vm.frame_grants().clone();
        let stop = vm.stop_handle();
        let debug = vm.debug_handle();
        let vcpu_threads = vm.vcpu_threads();
        let console = ConsoleInput::new(vm.serial());
        let (boot_image, allow_reboot, name) =
            (spec.boot.clone(), spec.allow_reboot, spec.name.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vm-{}", spec.name))
            .spawn(move || run(vm, &boot_image, allow_reboot, &name, &events))
            .map_err(BuiltinError::Thread)?;
        let transport = BuiltinTransport::new(region, device, frames, describe(spec));
        Ok((
            Machine {
                name: spec.name.clone(),
                stop,
                console,
                debug,
                vcpu_threads,
                boot: spec.boot.clone(),
                thread: Some(thread),
            },
            transport,
        ))
    }

    /// Its console input.
    pub fn console(&self) -> ConsoleInput {
        self.console.clone()
    }

    /// A handle that stops it from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// A debugger's handle on the VM (pause, registers, memory, guest debug), e.g. for
    /// `gdb::GdbServer`; it outlives the machine and then says the VM has ended.
    pub fn debug_handle(&self) -> DebugHandle {
        self.debug.clone()
    }

    /// The host threads running its vCPUs now (for host-kernel probes).
    pub fn vcpu_threads(&self) -> VcpuThreads {
        self.vcpu_threads.clone()
    }

    /// What it booted.
    pub fn boot_image(&self) -> &BootImage {
        &self.boot
    }

    /// Waits for the machine to end (call `stop_handle().stop()` first to make it end).
    pub fn wait(mut self) -> MachineEnd {
        self.join()
    }

    fn join(&mut self) -> MachineEnd {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(end)) => end,
            Some(Err(_)) => MachineEnd::Failed("the VM thread panicked".into()),
            None => MachineEnd::Stopped,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            let end = self.join();
            tracing::debug!(guest = %self.name, %end, "machine dropped");
        }
    }
}

fn describe(spec: &MachineSpec) -> String {
    let what = match &spec.boot {
        BootImage::Linux { kernel, .. } => format!("Linux {}", kernel.display()),
        BootImage::Elf { path, .. } => format!("ELF {}", path.display()),
    };
    format!(
        "builtin VMM ({} vCPU, {} MiB, {what}), Vesper device at 00:01.0",
        spec.vcpus, spec.memory_mib
    )
}

fn check_spec(spec: &MachineSpec) -> Result<(), BuiltinError> {
    let bad = |m: String| Err(BuiltinError::BadSpec(m));
    if !spec.region_size.is_power_of_two()
        || spec.region_size < vesper_shared_abi::MIN_REGION_SIZE
        || spec.region_size > MAX_REGION
    {
        return bad(format!(
            "region size {} bytes: use a power of two from {} MiB to {} MiB",
            spec.region_size,
            vesper_shared_abi::MIN_REGION_SIZE / MIB,
            MAX_REGION / MIB
        ));
    }
    if spec.memory_mib == 0 {
        return bad("0 MiB of RAM".into());
    }
    Ok(())
}

fn boot(vm: &mut Vm, image: &BootImage) -> Result<(), BuiltinError> {
    match image {
        BootImage::Linux {
            kernel,
            initramfs,
            cmdline,
        } => {
            vm.boot_linux(vesper_hypervisor::LinuxBoot {
                kernel,
                initramfs: initramfs.as_deref(),
                cmdline,
            })?;
        }
        BootImage::Elf { path, cmdline } => {
            vm.boot_elf64(path, cmdline)?;
        }
    }
    Ok(())
}

/// The VM thread: runs until the guest or the host ends it, rebooting in place on a
/// reset when allowed. A reset reloads the images: the old kernel has written over its
/// own.
fn run(
    mut vm: Vm,
    image: &BootImage,
    allow_reboot: bool,
    name: &str,
    events: &EventSink,
) -> MachineEnd {
    loop {
        let report = match vm.run(Duration::MAX) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(guest = %name, "VM failed: {e}");
                return MachineEnd::Failed(e.to_string());
            }
        };
        match report.stop {
            Stop::PowerOff(code) => return MachineEnd::PowerOff(code),
            Stop::HostStopped => return MachineEnd::Stopped,
            Stop::Halted => return MachineEnd::Halted,
            Stop::ResetRequested if !allow_reboot => {
                events(MachineEvent::Reset { rebooted: false });
                return MachineEnd::Reset;
            }
            Stop::ResetRequested => {
                let again = vm
                    .reset()
                    .map_err(BuiltinError::from)
                    .and_then(|()| boot(&mut vm, image));
                if let Err(e) = again {
                    tracing::error!(guest = %name, "reboot failed: {e}");
                    return MachineEnd::Failed(format!("reboot failed: {e}"));
                }
                tracing::info!(guest = %name, "guest reset; booted again");
                events(MachineEvent::Reset { rebooted: true });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            name: "t".into(),
            vcpus: 1,
            memory_mib: 64,
            boot: BootImage::Elf {
                path: "/nonexistent".into(),
                cmdline: String::new(),
            },
            region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
            console_log: "/dev/null".into(),
            allow_reboot: false,
        }
    }

    #[test]
    fn specs_the_device_cannot_map_are_refused_with_the_range() {
        let mut s = spec();
        s.region_size = 3 << 20;
        let e = check_spec(&s).unwrap_err().to_string();
        assert!(e.contains("power of two"), "{e}");
        s.region_size = 1 << 20;
        assert!(check_spec(&s).is_err());
        let mut s = spec();
        s.memory_mib = 0;
        assert!(check_spec(&s).is_err());
        assert!(check_spec(&spec()).is_ok());
    }
}
