//! How a guest (or the host) ends a run: the run control, a debug-exit port and a reset
//! port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::bus::BusDevice;

/// QEMU's `isa-debug-exit` port: a byte written here powers the VM off with that code.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// The PC reset control register: writing a value with bit 2 set requests a reset.
pub const RESET_PORT: u16 = 0xcf9;

/// Why the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    /// Wrote `code` to the debug-exit port.
    PowerOff(u8),
    /// Asked for a reset.
    Reset,
    /// The host asked the run to end (`StopHandle::stop`).
    Host,
}

/// Shared by the vCPU threads of one run: a stop flag they check before every entry and
/// the first stop request. Lock order: taken after a device mutex, never before one.
#[derive(Default)]
pub(crate) struct RunControl {
    stop: AtomicBool,
    request: Mutex<Option<StopRequest>>,
}

impl RunControl {
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Records the first request and stops every vCPU.
    pub(crate) fn request(&self, req: StopRequest) {
        let mut slot = self.request.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(req);
        self.stop();
    }

    pub(crate) fn peek_request(&self) -> Option<StopRequest> {
        *self.request.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn take_request(&self) -> Option<StopRequest> {
        self.request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub(crate) fn clear(&self) {
        self.take_request();
        self.stop.store(false, Ordering::Release);
    }
}

/// Ends a run from another thread: the running `Vm::run` notices within its kick interval,
/// pulls every vCPU out of `KVM_RUN` and returns `Stop::HostStopped`.
#[derive(Clone)]
pub struct StopHandle(pub(crate) Arc<RunControl>);

impl StopHandle {
    /// Asks the current (or next) run to end. The guest's own request, if it came
    /// first, wins.
    pub fn stop(&self) {
        self.0.request(StopRequest::Host);
    }
}

/// One byte at `DEBUG_EXIT_PORT`.
pub(crate) struct DebugExit(pub(crate) Arc<RunControl>);

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.0.request(StopRequest::PowerOff(code));
        }
    }
}

/// One byte at `RESET_PORT`.
pub(crate) struct ResetControl {
    pub(crate) control: Arc<RunControl>,
    pub(crate) value: u8,
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.value = v & 0x0e;
            if v & 0x04 != 0 {
                self.control.request(StopRequest::Reset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_and_clear_rearms() {
        let c = Arc::new(RunControl::default());
        let mut exit = DebugExit(c.clone());
        let mut reset = ResetControl {
            control: c.clone(),
            value: 0,
        };
        reset.write(0, &[0x02]);
        assert!(!c.stop_requested(), "bit 2 clear: no reset");
        exit.write(0, &[3]);
        reset.write(0, &[0x06]);
        assert!(c.stop_requested());
        assert_eq!(c.take_request(), Some(StopRequest::PowerOff(3)));
        c.clear();
        assert!(!c.stop_requested());
        reset.write(0, &[0x0e]);
        assert_eq!(c.take_request(), Some(StopRequest::Reset));
    }
}
