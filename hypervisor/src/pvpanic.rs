//! QEMU's ISA `pvpanic` device: one byte at port 0x505 through which a guest says it
//! panicked. Reading it returns the events the device supports; a write reports them.
//! The logic has no fd: a report goes to the callback the VMM's owner gave.

use crate::bus::BusDevice;

/// The pvpanic port (QEMU's default `ioport`).
pub const PVPANIC_PORT: u16 = 0x505;
/// Event bit: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: the guest loaded a crash kernel and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
const SUPPORTED: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvPanicEvent {
    /// The guest panicked.
    Panicked,
    /// The guest is about to run its crash kernel.
    CrashLoaded,
}

/// The callback a report goes to. Called on a vCPU thread with the device's lock held:
/// it must not block (send on a channel, bump a counter).
pub type PvPanicSink = Box<dyn FnMut(PvPanicEvent) + Send>;

/// The device.
pub struct PvPanic {
    sink: PvPanicSink,
    ignored: u64,
}

impl PvPanic {
    /// A device reporting to `sink`.
    pub fn new(sink: PvPanicSink) -> Self {
        Self { sink, ignored: 0 }
    }

    /// Writes that carried no supported event bit.
    pub fn ignored_writes(&self) -> u64 {
        self.ignored
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = SUPPORTED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        if value & SUPPORTED == 0 {
            self.ignored += 1;
            return;
        }
        // Like QEMU, a write with both bits reports the panic only.
        if value & PVPANIC_PANICKED != 0 {
            (self.sink)(PvPanicEvent::Panicked);
        } else {
            (self.sink)(PvPanicEvent::CrashLoaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reports_what_the_guest_writes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = PvPanic::new(Box::new(move |e| s.lock().unwrap().push(e)));
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(
            b[0], SUPPORTED,
            "the guest driver checks the supported bits"
        );
        dev.write(0, &[PVPANIC_PANICKED]);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        dev.write(0, &[0x80]);
        dev.write(0, &[]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                PvPanicEvent::Panicked,
                PvPanicEvent::CrashLoaded,
                PvPanicEvent::Panicked
            ]
        );
        assert_eq!(dev.ignored_writes(), 2);
    }
}
