//! The tiny guest (`tiny-guest/tiny.S`, assembled by `build.rs`): one flat 64 KiB
//! firmware image that boots unchanged on vesper-hypervisor and on QEMU (`-bios`), for
//! the VMM benchmarks (`doorbell_rtt`, `start_time`) and the round-trip test.
//!
//! The guest's first instruction is a write to port 0xe9 (`DEBUGCON_PORT`); it then
//! enumerates PCI, programs the Vesper device's BARs (and MSI-X when the device has it),
//! and runs `H_ITER` doorbell round trips, timing each with its TSC into the shared
//! memory (BAR2). Without a device it exits at once with `EXIT_NO_DEVICE`. The header
//! layout and exit codes below mirror the `.set`s at the top of `tiny.S`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use vesper_hypervisor::{
    BusDevice, BusRange, HypervisorError, RealModeEntry, Stop, VesperConfig, Vm, VmConfig,
};
use vesper_ivshmem::{IvshmemError, IvshmemServer};

/// The assembled image (empty when binutils were missing at build time).
const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny.bin"));

/// The image, or `None` when it could not be assembled.
pub fn image() -> Option<&'static [u8]> {
    (!IMAGE.is_empty()).then_some(IMAGE)
}

/// Where our VMM loads the image (QEMU shows the last 64 KiB of `-bios` there too).
pub const IMAGE_ADDR: u64 = 0xf_0000;
/// The guest's text, and its first instruction: `out %al, $0xe9`.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// Guest RAM on both VMMs, MiB, unless `VESPER_TINY_MEM_MIB` says otherwise.
pub const MEM_MIB: u64 = 16;

/// Guest RAM in MiB: `VESPER_TINY_MEM_MIB` (at least 2), else `MEM_MIB`.
pub fn mem_mib() -> u64 {
    std::env::var("VESPER_TINY_MEM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(MEM_MIB, |m| m.max(2))
}
/// BAR0 on our VMM (fixed); the guest asks QEMU for the same address.
pub const BAR0: u64 = 0xc010_0000;
/// BAR2 (the shared memory) on our VMM; the guest asks QEMU for the same.
pub const BAR2: u64 = 0xc000_0000;
/// The shared memory: header and samples.
pub const REGION_SIZE: u64 = 1 << 20;
/// The IDT vector of the doorbell interrupt (the MSI data).
pub const MSI_VECTOR: u32 = 0x40;
/// The MSI-X message address the guest programs: fixed delivery to LAPIC 0.
pub const MSI_ADDRESS: u32 = 0xfee0_0000;

/// Header magic, "VSPB".
pub const MAGIC: u32 = 0x4250_5356;
const H_MAGIC: u64 = 0;
const H_ITER: u64 = 4;
const H_STATUS: u64 = 8;
const H_DONE: u64 = 12;
const H_TSC_FIRST: u64 = 16;
const H_TSC_LAST: u64 = 24;
const H_FLAGS: u64 = 32;
const H_WAIT: u64 = 36;
const H_SAMPLES: u64 = 64;
/// Most round trips one run can record (1 MiB of samples).
pub const MAX_ITER: u32 = 262_000;
/// `H_FLAGS` bit: the guest found and programmed MSI-X.
pub const FLAG_MSIX: u32 = 1;

/// Exit code: all round trips done.
pub const EXIT_DONE: u8 = 0x10;
/// Exit code: no Vesper device on bus 0 (the start-time guests).
pub const EXIT_NO_DEVICE: u8 = 0x11;
/// Exit code: the shared-memory header was not what the host writes.
pub const EXIT_BAD_HEADER: u8 = 0x12;
/// Exit code: an unexpected interrupt or exception (its vector is on the console).
pub const EXIT_TRAP: u8 = 0x13;

/// What can go wrong running the tiny guest.
#[derive(Debug, Error)]
pub enum TinyGuestError {
    /// The image was not assembled (binutils missing at build time).
    #[error("the tiny guest image was not assembled (as/ld/objcopy missing at build time)")]
    NoImage,
    /// Our VMM failed.
    #[error("vesper-hypervisor")]
    Vmm(#[from] HypervisorError),
    /// The ivshmem server failed.
    #[error("ivshmem server")]
    Ivshmem(#[from] IvshmemError),
    /// A host call failed.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    /// QEMU ended other than by the guest's exit code.
    #[error("QEMU ended with {status} (guest console {console:?}): {stderr}")]
    Qemu {
        /// Its exit status.
        status: ExitStatus,
        /// What the guest printed.
        console: String,
        /// QEMU's stderr.
        stderr: String,
    },
    /// The guest stopped some other way than expected.
    #[error("guest ended with {stop} instead of exit code {expected:#x}; console {console:?}")]
    Guest {
        /// How it ended.
        stop: String,
        /// The exit code expected.
        expected: u8,
        /// What the guest printed.
        console: String,
    },
    /// The guest's results are inconsistent.
    #[error("guest results: {0}")]
    Results(String),
}

type Result<T> = std::result::Result<T, TinyGuestError>;

/// Port 0xe9 on our VMM: the guest's text and the time of its first write.
#[derive(Default)]
pub struct DebugCon {
    /// When the first byte was written (the guest's first instruction).
    pub first: Option<Instant>,
    /// Everything written.
    pub text: Vec<u8>,
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.first.get_or_insert_with(Instant::now);
        if self.text.len() < 4096 {
            self.text.extend_from_slice(data);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn console_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(char::from(0))
        .trim()
        .to_string()
}

/// How the guest waits for the host's answer after ringing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `sti; hlt`: the vCPU sleeps in the kernel until the interrupt (an idle guest).
    Halt,
    /// `sti` and a `pause` loop: the vCPU keeps running guest code.
    Spin,
}

impl Wait {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Halt => "hlt",
            Self::Spin => "spin",
        }
    }
}

/// A zeroed memfd of `REGION_SIZE` bytes with the header asking for `iterations`, waiting
/// with `wait`.
fn shared_region(iterations: u32, wait: Wait) -> Result<File> {
    // SAFETY: the name is NUL-terminated; the returned fd is checked and then owned.
    let fd = unsafe { libc::memfd_create(c"vesper-tiny".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(TinyGuestError::Io(
            "memfd_create",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh fd nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let io = |what| move |e| TinyGuestError::Io(what, e);
    file.set_len(REGION_SIZE).map_err(io("size the region"))?;
    file.write_all_at(&MAGIC.to_le_bytes(), H_MAGIC)
        .map_err(io("write the header"))?;
    file.write_all_at(&iterations.to_le_bytes(), H_ITER)
        .map_err(io("write the header"))?;
    file.write_all_at(&u32::from(wait == Wait::Spin).to_le_bytes(), H_WAIT)
        .map_err(io("write the header"))?;
    Ok(file)
}

/// Host-side view of one pump: when doorbells arrived.
#[derive(Clone, Copy, Debug, Default)]
pub struct PumpStats {
    /// Doorbell rings counted.
    pub rings: u64,
    /// Host time right after answering the first doorbell.
    pub first: Option<Instant>,
    /// Host time right after answering the last doorbell.
    pub last: Option<Instant>,
}

/// The host peer: waits for the guest's doorbell on `doorbell` (a non-blocking eventfd:
/// poll, then read) and answers each with `raise` (an eventfd write that interrupts the
/// guest), until `stop`. The same code serves both VMMs.
fn pump(
    doorbell: RawFd,
    raise: &dyn Fn() -> std::io::Result<()>,
    stop: &AtomicBool,
) -> Result<PumpStats> {
    let mut stats = PumpStats::default();
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: doorbell,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for an eventfd the caller keeps open, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, 50) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TinyGuestError::Io("poll the doorbell", e));
        }
        if rc == 0 {
            continue;
        }
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`, which is 8 bytes long.
        let n = unsafe { libc::read(doorbell, count.as_mut_ptr().cast(), count.len()) };
        if n != 8 {
            continue; // EAGAIN: someone else's wake-up
        }
        raise().map_err(|e| TinyGuestError::Io("raise the guest interrupt", e))?;
        let now = Instant::now();
        stats.first.get_or_insert(now);
        stats.last = Some(now);
        stats.rings += u64::from_ne_bytes(count);
    }
    Ok(stats)
}

/// Runs `guest` on this thread while `pump` answers `doorbell` with `raise` on another
/// (stopped once `guest` returns); returns what `guest` returned and the pump's view.
fn pumped<T>(
    doorbell: RawFd,
    raise: impl Fn() -> std::io::Result<()> + Sync,
    guest: impl FnOnce() -> T,
) -> (T, Result<PumpStats>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let host = s.spawn(|| pump(doorbell, &raise, &stop));
        let out = guest();
        stop.store(true, Ordering::Release);
        let stats = host
            .join()
            .map_err(|_| TinyGuestError::Results("the pump thread panicked".into()))
            .and_then(|r| r);
        (out, stats)
    })
}

/// The results of one run of round trips.
#[derive(Clone, Debug)]
pub struct RoundTrips {
    /// Guest TSC ticks per round trip, in order.
    pub ticks: Vec<u32>,
    /// `H_FLAGS` as the guest left them.
    pub flags: u32,
    /// Guest TSC at the first and the last doorbell.
    pub tsc_first: u64,
    /// See `tsc_first`.
    pub tsc_last: u64,
    /// The host side.
    pub pump: PumpStats,
    /// What the guest printed.
    pub console: String,
    /// Wall time of the whole run (VM creation or QEMU spawn to the end).
    pub wall: Duration,
}

impl RoundTrips {
    /// The guest TSC rate as the host clock saw it: guest ticks between the first and
    /// the last doorbell over host time between answering them.
    pub fn guest_tsc_hz(&self) -> Option<f64> {
        let host = self.pump.last?.checked_duration_since(self.pump.first?)?;
        let ticks = self.tsc_last.checked_sub(self.tsc_first)?;
        (host > Duration::from_millis(20)).then(|| ticks as f64 / host.as_secs_f64())
    }

    /// Reads the guest's results from the region after a run of `iterations`, with the
    /// host's side of the run.
    fn read(
        region: &File,
        iterations: u32,
        pump: PumpStats,
        console: String,
        wall: Duration,
    ) -> Result<Self> {
        let io = |e| TinyGuestError::Io("read the region", e);
        let u32_at = |off| -> Result<u32> {
            let mut b = [0u8; 4];
            region.read_exact_at(&mut b, off).map_err(io)?;
            Ok(u32::from_le_bytes(b))
        };
        let u64_at = |off| -> Result<u64> {
            let mut b = [0u8; 8];
            region.read_exact_at(&mut b, off).map_err(io)?;
            Ok(u64::from_le_bytes(b))
        };
        let (status, done) = (u32_at(H_STATUS)?, u32_at(H_DONE)?);
        if status != 2 || done != iterations {
            return Err(TinyGuestError::Results(format!(
                "status {status}, {done} of {iterations} round trips done"
            )));
        }
        let mut raw = vec![0u8; done as usize * 4];
        region.read_exact_at(&mut raw, H_SAMPLES).map_err(io)?;
        let ticks = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            ticks,
            flags: u32_at(H_FLAGS)?,
            tsc_first: u64_at(H_TSC_FIRST)?,
            tsc_last: u64_at(H_TSC_LAST)?,
            pump,
            console,
            wall,
        })
    }
}

fn vm_config() -> VmConfig {
    VmConfig {
        vcpus: 1,
        mem_size: mem_mib() << 20,
    }
}

/// Loads the image at `IMAGE_ADDR`, enters at f000:fff0 (the reset vector) and puts a
/// `DebugCon` on port 0xe9.
fn prepare(vm: &mut Vm, image: &[u8]) -> Result<Arc<Mutex<DebugCon>>> {
    vm.load(IMAGE_ADDR, image)?;
    vm.set_real_mode_entry(RealModeEntry {
        segment: 0xf000,
        ip: 0xfff0,
        sp: 0,
    })?;
    let con = Arc::new(Mutex::new(DebugCon::default()));
    vm.register_pio(BusRange::new(DEBUGCON_PORT.into(), 1)?, con.clone())?;
    Ok(con)
}

fn expect_exit(report: &vesper_hypervisor::RunReport, code: u8, console: &str) -> Result<()> {
    if report.stop == Stop::PowerOff(code) {
        return Ok(());
    }
    Err(TinyGuestError::Guest {
        stop: format!("{:?}", report.stop),
        expected: code,
        console: console.to_string(),
    })
}

/// `iterations` round trips on vesper-hypervisor: doorbell = the device's KVM ioeventfd,
/// host → guest = `VesperHandle::notify(0)` (the guest's MSI-X vector 0: an irqfd on
/// the MSI route the VMM made from the guest's table entry), the host peer = `pump` on
/// its own thread.
pub fn vmm_round_trips(iterations: u32, wait: Wait, timeout: Duration) -> Result<RoundTrips> {
    let image = image().ok_or(TinyGuestError::NoImage)?;
    let start = Instant::now();
    let mut vm = Vm::with_irqchip(vm_config(), Box::new(std::io::sink()))?;
    let con = prepare(&mut vm, image)?;
    let region = shared_region(iterations, wait)?;
    let device = vm.add_vesper_device(VesperConfig {
        peer_id: 1,
        bar0: BAR0,
        bar2: BAR2,
        region: region.as_fd(),
        region_size: REGION_SIZE,
    })?;
    let doorbell = device
        .doorbell(0)
        .ok_or(TinyGuestError::Results("no doorbell vector 0".into()))?
        .as_raw_fd();
    let raise = || device.notify(0).map_err(std::io::Error::other);
    let (run, pump) = pumped(doorbell, raise, || vm.run(timeout));
    let wall = start.elapsed();
    let console = console_text(&lock(&con).text);
    let pump = pump?;
    expect_exit(&run?, EXIT_DONE, &console)?;
    RoundTrips::read(&region, iterations, pump, console, wall)
}

/// One start of the tiny guest on vesper-hypervisor (no device: the guest exits right
/// after its first instructions).
#[derive(Clone, Copy, Debug)]
pub struct VmmStart {
    /// `Vm::with_irqchip` (KVM VM, irqchip, RAM, vCPU, the VMM's own devices).
    pub create: Duration,
    /// Image load, real-mode entry, the port-0xe9 device.
    pub prepare: Duration,
    /// `Vm::run` called → the guest's first instruction (its port write) seen.
    pub run_to_first: Duration,
    /// Creation started → first instruction: the figure.
    pub total: Duration,
    /// Dropping the VM after it ended.
    pub teardown: Duration,
}

/// Starts the tiny guest once on vesper-hypervisor and times it.
pub fn vmm_start() -> Result<VmmStart> {
    let image = image().ok_or(TinyGuestError::NoImage)?;
    let t0 = Instant::now();
    let mut vm = Vm::with_irqchip(vm_config(), Box::new(std::io::sink()))?;
    let t1 = Instant::now();
    let con = prepare(&mut vm, image)?;
    let t2 = Instant::now();
    let report = vm.run(Duration::from_secs(10))?;
    let t3 = Instant::now();
    drop(vm);
    let teardown = t3.elapsed();
    let (first, text) = {
        let c = lock(&con);
        (c.first, console_text(&c.text))
    };
    expect_exit(&report, EXIT_NO_DEVICE, &text)?;
    let first = first.ok_or(TinyGuestError::Results("no port 0xe9 write seen".into()))?;
    Ok(VmmStart {
        create: t1 - t0,
        prepare: t2 - t1,
        run_to_first: first.saturating_duration_since(t2),
        total: first.saturating_duration_since(t0),
        teardown,
    })
}

/// The accelerator QEMU runs the tiny guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuAccel {
    /// `-accel kvm -cpu host,-arch-capabilities` (QEMU 7.2's `-cpu host` aborts under
    /// kvm_pvm: it cannot set MSR 0x10a, IA32_ARCH_CAPABILITIES).
    Kvm,
    /// `-accel tcg -cpu max`.
    Tcg,
}

impl QemuAccel {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "KVM",
            Self::Tcg => "TCG",
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Self::Kvm => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
            Self::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// The QEMU binary, if installed.
pub fn qemu_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// `qemu-system-x86_64 --version`'s first line.
pub fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown QEMU".into())
}

/// The image written to a file QEMU can take as `-bios` (kept with `dir`).
pub fn image_file(dir: &Path) -> Result<PathBuf> {
    let image = image().ok_or(TinyGuestError::NoImage)?;
    let path = dir.join("tiny.bin");
    std::fs::write(&path, image).map_err(|e| TinyGuestError::Io("write the image", e))?;
    Ok(path)
}

/// QEMU running the tiny guest as `-bios`, its debug console on stdout, isa-debug-exit
/// on 0x501. q35 as in the project's QEMU guests; `-m mem_mib()`.
fn qemu_command(accel: QemuAccel, bios: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35"])
        .args(accel.args())
        .args(["-m", &mem_mib().to_string()])
        .arg("-bios")
        .arg(bios)
        .args(["-chardev", "stdio,id=dbg"])
        .args(["-device", "isa-debugcon,iobase=0xe9,chardev=dbg"])
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=2"])
        .arg("-no-reboot")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// QEMU's exit status for guest exit code `code` (isa-debug-exit: `(code << 1) | 1`).
fn qemu_status(code: u8) -> i32 {
    (i32::from(code) << 1) | 1
}

/// Waits for `child` up to `timeout` (then kills it); returns its status, stdout, stderr.
fn finish(mut child: Child, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| TinyGuestError::Io("wait for QEMU", e))?;
            }
            Err(e) => return Err(TinyGuestError::Io("wait for QEMU", e)),
        }
    };
    let mut out = Vec::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Ok((status, console_text(&out), err.trim().to_string()))
}

/// `iterations` round trips through QEMU's ivshmem-doorbell: the host peer is our
/// ivshmem server (`pump` on peer 0's vector-0 eventfd, answering with the guest peer's
/// vector-0 eventfd, which QEMU turns into the guest's MSI-X vector 0).
pub fn qemu_round_trips(
    accel: QemuAccel,
    iterations: u32,
    wait: Wait,
    timeout: Duration,
) -> Result<RoundTrips> {
    let dir = tempfile::tempdir().map_err(|e| TinyGuestError::Io("temporary directory", e))?;
    let bios = image_file(dir.path())?;
    let socket = dir.path().join("ivshmem.sock");
    let mut server = IvshmemServer::bind(&socket, vesper_ivshmem::VECTORS)?;
    let region = shared_region(iterations, wait)?;
    let start = Instant::now();
    let mut child = qemu_command(accel, &bios)
        .args([
            "-chardev",
            &format!("socket,path={},id=iv", socket.display()),
        ])
        .args(["-device", "ivshmem-doorbell,chardev=iv,vectors=2"])
        .spawn()
        .map_err(|e| TinyGuestError::Io("spawn QEMU", e))?;
    let peer = loop {
        match server.accept(region.as_fd()) {
            Ok(Some(p)) => break p,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || start.elapsed() > timeout {
            let _ = child.kill();
            let (status, console, stderr) = finish(child, Duration::ZERO)?;
            return Err(TinyGuestError::Qemu {
                status,
                console,
                stderr,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let doorbell = server
        .host_vector(0)
        .ok_or(TinyGuestError::Results("no host vector 0".into()))?
        .as_raw_fd();
    let raise = || peer.notify(0).map_err(std::io::Error::other);
    let (finished, pump) = pumped(doorbell, raise, || {
        finish(child, timeout.saturating_sub(start.elapsed()))
    });
    let wall = start.elapsed();
    let (status, console, stderr) = finished?;
    let pump = pump?;
    if status.code() != Some(qemu_status(EXIT_DONE)) {
        return Err(TinyGuestError::Qemu {
            status,
            console,
            stderr,
        });
    }
    RoundTrips::read(&region, iterations, pump, console, wall)
}

/// One start of the tiny guest under QEMU (no device).
#[derive(Clone, Copy, Debug)]
pub struct QemuStart {
    /// Spawning QEMU → the guest's first port write read from the debug-console pipe.
    pub to_first: Duration,
    /// Spawning QEMU → its exit after the guest's exit code.
    pub to_exit: Duration,
}

/// Starts the tiny guest once under QEMU with `bios` (from `image_file`) and times it.
pub fn qemu_start(accel: QemuAccel, bios: &Path) -> Result<QemuStart> {
    let t0 = Instant::now();
    let mut child = qemu_command(accel, bios)
        .spawn()
        .map_err(|e| TinyGuestError::Io("spawn QEMU", e))?;
    let mut first = [0u8; 1];
    let got = child
        .stdout
        .as_mut()
        .map(|o| o.read(&mut first))
        .transpose()
        .map_err(|e| TinyGuestError::Io("read QEMU's debug console", e))?;
    let to_first = t0.elapsed();
    let (status, console, stderr) = finish(child, Duration::from_secs(30))?;
    let to_exit = t0.elapsed();
    if got != Some(1) || status.code() != Some(qemu_status(EXIT_NO_DEVICE)) {
        return Err(TinyGuestError::Qemu {
            status,
            console,
            stderr,
        });
    }
    Ok(QemuStart { to_first, to_exit })
}

/// The image, when the VMM comparison benches can run here: the image was assembled,
/// /dev/kvm is usable (else a loud banner names `bench`) and QEMU is installed. Otherwise
/// why not.
pub fn comparison_image(bench: &str) -> std::result::Result<&'static [u8], &'static str> {
    let image =
        image().ok_or("the tiny guest was not assembled (as/ld/objcopy missing at build time)")?;
    if !crate::kvm_usable(bench) {
        return Err("no usable /dev/kvm: vesper-hypervisor cannot run");
    }
    if qemu_binary().is_none() {
        return Err("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    Ok(image)
}

/// Prints where a comparison ran: this machine, the date, the load and QEMU's version.
pub fn print_setting() {
    println!("machine: {}", machine());
    println!(
        "date: {}; load average (1 min) {}; {}",
        date_utc(),
        load_average(),
        qemu_version()
    );
}

/// min, p50, p99, mean, max of `v` (sorted in place); zeros when empty.
pub fn summary(v: &mut [f64]) -> [f64; 5] {
    if v.is_empty() {
        return [0.0; 5];
    }
    v.sort_by(f64::total_cmp);
    let pct = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    [v[0], pct(0.5), pct(0.99), mean, v[v.len() - 1]]
}

/// This machine in one line: CPU model, CPUs, kernel, KVM module.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|r| r.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kvm = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{model}, {cpus} CPUs, Linux {}, /dev/kvm: {}",
        kernel.trim(),
        if kvm.is_empty() { "none" } else { &kvm }
    )
}

/// Now in UTC, `date -u` style.
pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The 1-minute load average, to judge how noisy the figures are.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}
