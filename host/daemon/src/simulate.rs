//! Simulated guests for load tests: each is a real shared region with a real doorbell
//! eventfd and a real control `Session` in this daemon, fed by host threads that speak
//! the guest side of the protocol (hello, relay channel open, urgent exit records,
//! doorbells) exactly as the guest frontend does. Only the VM is missing.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;
use vesper_api::{AccelChoice, VmStatus};
use vesper_core::{Session, SessionConfig, SessionEvent};
use vesper_qemu::Accel;
use vesper_relay::guest_writer::GuestChannel;
use vesper_shared_abi::*;
use vesper_shmem::guest_side::{post_request, take_response};
use vesper_shmem::SharedRegion;
use vm_memory::ByteValued;

use crate::events::{publish_records, EventBus};
use crate::relay::RelayStore;

/// Threads playing the guests.
const PRODUCER_THREADS: usize = 4;
const GENERATION: u32 = 1;

struct SimGuest {
    name: String,
    region: Arc<SharedRegion>,
    doorbell: Arc<EventFd>,
}

/// Starts `count` simulated guests named `sim0`… that each report `rate` watched-service
/// exits per second through a relay channel.
pub fn spawn(bus: Arc<EventBus>, count: usize, rate: f64) -> Result<(), String> {
    let mut guests = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("sim{i}");
        let region = Arc::new(
            SharedRegion::create(&name, MIN_REGION_SIZE).map_err(|e| format!("{name}: {e}"))?,
        );
        let doorbell = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| format!("{name}: eventfd: {e}"))?,
        );
        let fd = doorbell
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("{name}: {e}"))?;
        // SAFETY: `fd` is a valid, owned eventfd that the AsyncFd keeps open for its lifetime.
        let watched = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| format!("{name}: {}", e.into_parts().1))?;
        tokio::spawn(serve(
            name.clone(),
            region.clone(),
            doorbell.clone(),
            watched,
            bus.clone(),
        ));
        guests.push(SimGuest {
            name,
            region,
            doorbell,
        });
    }
    let per_thread = count.div_ceil(PRODUCER_THREADS).max(1);
    let mut rest = guests;
    while !rest.is_empty() {
        let batch: Vec<SimGuest> = rest.drain(..per_thread.min(rest.len())).collect();
        std::thread::spawn(move || produce(batch, rate));
    }
    tracing::info!(count, rate, "simulated guests running");
    Ok(())
}

/// The host side of one simulated guest, as `GuestTask` does it for a VM.
async fn serve(
    name: String,
    region: Arc<SharedRegion>,
    doorbell: Arc<EventFd>,
    watched: AsyncFd<OwnedFd>,
    bus: Arc<EventBus>,
) {
    let mut session = Session::new(SessionConfig::default());
    let mut relay = RelayStore::new(&name);
    let status = Mutex::new(VmStatus {
        name: name.clone(),
        state: "up".into(),
        pid: None,
        vmm: vesper_api::Vmm::Qemu,
        accel: AccelChoice {
            accel: Accel::Tcg,
            reason: "simulated guest".into(),
        },
        guest: None,
        console_log: Default::default(),
        boot_secs: None,
        failure: None,
        memory_mib: 0,
        attached: None,
        adopted: None,
        frontend: None,
    });
    loop {
        tokio::select! {
            r = watched.readable() => {
                if let Ok(mut g) = r { g.clear_ready(); }
                let _ = doorbell.read();
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        for ev in session.poll(&region, Instant::now()).events {
            match ev {
                SessionEvent::Records { channel, records } => {
                    let stored = relay.push(&channel, records);
                    publish_records(&bus, &status, &name, stored, &|m| relay.layout(m));
                }
                SessionEvent::Misbehaviour(e) => {
                    tracing::warn!(guest = %name, "simulated guest misbehaving: {e}")
                }
                _ => {}
            }
        }
    }
}

fn post(g: &SimGuest, kind: u32, id: u64, payload: &[u8]) {
    let h = MsgHeader {
        kind,
        id,
        generation: GENERATION,
        ..Default::default()
    };
    if post_request(&g.region, h, payload).is_ok() {
        let _ = g.doorbell.write(1);
    }
}

/// Plays the guest side for `guests`: hello, standing wait, a relay channel, then exit
/// records at `rate` per guest per second.
fn produce(guests: Vec<SimGuest>, rate: f64) {
    let mut channels = Vec::with_capacity(guests.len());
    for g in &guests {
        let mut hello = HelloRequest {
            frontend_version: *vesper_core::FRONTEND_VERSIONS.end(),
            nr_cpus: 1,
            region_size: g.region.size(),
            ..Default::default()
        };
        fill_c_str(&mut hello.kernel_release, b"simulated");
        fill_c_str(&mut hello.vermagic, b"simulated");
        post(g, REQ_HELLO, 1, hello.as_slice());
        post(g, REQ_WAIT_COMMAND, 2, &[]);
        match GuestChannel::create(
            &g.region,
            GENERATION,
            1,
            1,
            4,
            4096,
            false,
            DATA_AREA_OFFSET,
            0,
        ) {
            Ok((ch, mut req)) => {
                fill_c_str(&mut req.module, b"vesper_exit_probe");
                fill_c_str(&mut req.name, b"exit");
                post(g, REQ_RELAY_OPEN, 3, req.as_slice());
                channels.push(Some(ch));
            }
            Err(e) => {
                tracing::warn!(guest = %g.name, "simulated channel: {e}");
                channels.push(None);
            }
        }
    }
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next = Instant::now() + period;
    // Each guest reports at its own phase of the period, as independent guests would.
    let step = period / guests.len().max(1) as u32;
    loop {
        for (g, ch) in guests.iter().zip(channels.iter_mut()) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += step;
            // Answers the host wrote (hello, relay open) are consumed like the frontend does.
            while let Ok(Some(_)) = take_response(&g.region) {}
            let Some(ch) = ch else { continue };
            let mut rec = ExitRecord {
                pid: 1000,
                tid: 1000,
                exit_code: 9,
                signal: 9,
                ..Default::default()
            };
            fill_c_str(&mut rec.comm, b"svc");
            if let Ok(Ok(_)) = ch.write(
                &g.region,
                0,
                RECORD_EXIT,
                RECORD_FLAG_URGENT,
                rec.as_slice(),
            ) {
                let _ = g.doorbell.write(1);
            }
        }
    }
}
