//! The host's side of the guest's 8250: input lines queued into the receive FIFO.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vesper_hypervisor::Serial;

use crate::BuiltinError;

/// How long a line may wait for the guest to drain its receive FIFO.
const INPUT_TIMEOUT: Duration = Duration::from_secs(5);
const INPUT_POLL: Duration = Duration::from_millis(1);

/// Types into the guest's console. Cloneable; lines from several clones never interleave.
#[derive(Clone)]
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    /// Held while a line is being fed, so two senders never interleave bytes.
    line: Arc<Mutex<()>>,
}

impl ConsoleInput {
    pub(crate) fn new(serial: Arc<Mutex<Serial>>) -> Self {
        Self {
            serial,
            line: Arc::new(Mutex::new(())),
        }
    }

    /// Queues `bytes` for the guest, a FIFO's worth at a time as it reads them. Blocks
    /// until all are queued, or fails after a few seconds if the guest stops reading
    /// (the bytes queued so far stay queued). Call from a blocking context.
    pub fn send(&self, bytes: &[u8]) -> Result<(), BuiltinError> {
        self.send_within(bytes, INPUT_TIMEOUT)
    }

    fn send_within(&self, bytes: &[u8], timeout: Duration) -> Result<(), BuiltinError> {
        let _line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        let start = Instant::now();
        let mut queued = 0;
        while queued < bytes.len() {
            let n = self
                .serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .enqueue_input(&bytes[queued..]);
            queued += n;
            if queued == bytes.len() {
                break;
            }
            if start.elapsed() > timeout {
                return Err(BuiltinError::ConsoleStalled {
                    queued,
                    len: bytes.len(),
                    ms: timeout.as_millis(),
                });
            }
            std::thread::sleep(INPUT_POLL);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesper_hypervisor::serial::RX_FIFO_CAPACITY;

    #[test]
    fn a_line_longer_than_the_fifo_waits_for_the_reader_and_arrives_whole() {
        let serial = Arc::new(Mutex::new(Serial::new(Box::new(std::io::sink()))));
        let input = ConsoleInput::new(serial.clone());
        let line: Vec<u8> = (0..200u8).collect();
        let reader = {
            let serial = serial.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 200 {
                    let mut s = serial.lock().unwrap();
                    // LSR bit 0: data ready; RBR at offset 0.
                    if s.read_register(5) & 1 != 0 {
                        got.push(s.read_register(0));
                    } else {
                        drop(s);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                got
            })
        };
        input.send(&line).unwrap();
        assert_eq!(reader.join().unwrap(), line);
    }

    #[test]
    fn a_guest_that_never_reads_gets_a_stall_error_naming_what_was_taken() {
        let serial = Arc::new(Mutex::new(Serial::new(Box::new(std::io::sink()))));
        let input = ConsoleInput::new(serial);
        let err = input
            .send_within(&[b'x'; RX_FIFO_CAPACITY + 10], Duration::from_millis(50))
            .unwrap_err();
        match err {
            BuiltinError::ConsoleStalled { queued, len, .. } => {
                assert_eq!((queued, len), (RX_FIFO_CAPACITY, RX_FIFO_CAPACITY + 10));
            }
            other => panic!("expected a stall, got {other}"),
        }
    }
}
