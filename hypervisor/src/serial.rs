//! An 8250/16550A UART: register logic only, no fd. Output goes to any `Write`.
//!
//! Transmission is instantaneous (THR empty is always set). There is no interrupt line yet
//! (no irqchip in this layer): `interrupt_pending` says what IIR would report.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::bus::BusDevice;

/// The standard COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Registers the UART answers on.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Bytes the receive FIFO holds; further input is refused.
pub const RX_FIFO_CAPACITY: usize = 64;

const DATA: u64 = 0; // RBR / THR, DLL with DLAB
const IER: u64 = 1; // DLM with DLAB
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const LCR_DLAB: u8 = 0x80;
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_MASK: u8 = 0x0f;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// The UART state.
pub struct Serial {
    out: Box<dyn Write + Send>,
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    fcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    thre_pending: bool,
    write_errors: u64,
    interrupt: Option<InterruptLine>,
}

/// Raises the UART's interrupt (e.g. writes an irqfd); called from the vCPU thread.
pub type InterruptLine = Box<dyn Fn() + Send>;

impl Serial {
    /// A UART in its power-on state, transmitting into `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            rx: VecDeque::new(),
            ier: 0,
            lcr: 0x03,
            mcr: 0x08,
            fcr: 0,
            scr: 0,
            dll: 0x0c, // 9600 baud
            dlm: 0,
            thre_pending: false,
            write_errors: 0,
            interrupt: None,
        }
    }

    /// Back to the power-on register state (output and its error count are kept).
    pub fn reset(&mut self) {
        let out = std::mem::replace(&mut self.out, Box::new(std::io::sink()));
        let write_errors = self.write_errors;
        let interrupt = self.interrupt.take();
        *self = Self::new(out);
        self.write_errors = write_errors;
        self.interrupt = interrupt;
    }

    /// Queues bytes for the guest to read; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let before = self.interrupt_pending();
        let room = RX_FIFO_CAPACITY.saturating_sub(self.rx.len());
        let n = room.min(bytes.len());
        self.rx.extend(&bytes[..n]);
        self.signal(before, false);
        n
    }

    /// Connects the interrupt output: `line` is called each time an interrupt condition
    /// arises (edge, as an ISA IRQ), and when IER is written while one is pending.
    pub fn set_interrupt_line(&mut self, line: InterruptLine) {
        self.interrupt = Some(line);
    }

    /// Whether an interrupt output is connected.
    pub fn has_interrupt_line(&self) -> bool {
        self.interrupt.is_some()
    }

    /// Raises the line on a rising edge of `interrupt_pending`, or when the guest
    /// (re)enabled interrupts with one pending (8250 drivers test THRE that way).
    fn signal(&self, before: bool, ier_written: bool) {
        if let Some(line) = &self.interrupt {
            if self.interrupt_pending() && (!before || ier_written) {
                line();
            }
        }
    }

    /// Whether an enabled interrupt condition is pending (what IIR would report).
    pub fn interrupt_pending(&self) -> bool {
        self.iir() & IIR_NONE == 0
    }

    /// How many transmitted bytes the output refused.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fcr & FCR_ENABLE != 0 {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        let id = if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else {
            IIR_NONE
        };
        fifo | id
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.enqueue_input(&[byte]);
        } else if self.out.write_all(&[byte]).is_err() {
            self.write_errors += 1;
            if self.write_errors == 1 {
                tracing::warn!("serial output refused a byte; further failures only counted");
            }
        }
        self.thre_pending = true;
    }

    /// Reads one register.
    pub fn read_register(&mut self, offset: u64) -> u8 {
        match offset {
            DATA if self.dlab() => self.dll,
            DATA => self.rx.pop_front().unwrap_or(0),
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR_FCR => {
                let iir = self.iir();
                if iir & 0x0f == IIR_THRE {
                    // Reading IIR acknowledges a THR-empty interrupt.
                    self.thre_pending = false;
                }
                iir
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
                LSR_THRE | LSR_TEMT | dr
            }
            MSR if self.loopback() => {
                let m = self.mcr;
                let mut msr = 0;
                if m & 0x01 != 0 {
                    msr |= MSR_DSR;
                }
                if m & 0x02 != 0 {
                    msr |= MSR_CTS;
                }
                if m & 0x04 != 0 {
                    msr |= MSR_RI;
                }
                if m & 0x08 != 0 {
                    msr |= MSR_DCD;
                }
                msr
            }
            MSR => MSR_DCD | MSR_DSR | MSR_CTS,
            SCR => self.scr,
            _ => 0xff,
        }
    }

    /// Writes one register.
    pub fn write_register(&mut self, offset: u64, value: u8) {
        match offset {
            DATA if self.dlab() => self.dll = value,
            DATA => self.transmit(value),
            IER if self.dlab() => self.dlm = value,
            IER => {
                self.ier = value & IER_MASK;
                // Enabling the THR-empty interrupt while THR is empty raises it at once.
                if self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            IIR_FCR => {
                if value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
                self.fcr = value & 0xc9;
            }
            LCR => self.lcr = value,
            MCR => self.mcr = value & MCR_MASK,
            SCR => self.scr = value,
            _ => {} // LSR and MSR are read-only.
        }
    }
}

impl BusDevice for Serial {
    // A wider access (or string I/O) is taken byte by byte on the same register.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for b in data {
            let before = self.interrupt_pending();
            *b = self.read_register(offset);
            self.signal(before, false);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for &b in data {
            let before = self.interrupt_pending();
            self.write_register(offset, b);
            self.signal(before, offset == IER && !self.dlab());
        }
    }
}

/// A cloneable in-memory `Write` target, e.g. to capture a guest's console.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> (Serial, SharedBuffer) {
        let buf = SharedBuffer::new();
        (Serial::new(Box::new(buf.clone())), buf)
    }

    #[test]
    fn interrupt_line_rises_on_each_new_condition_as_an_8250_driver_needs() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let (mut s, buf) = uart();
        let raised = Arc::new(AtomicU32::new(0));
        let r = raised.clone();
        s.set_interrupt_line(Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }));
        let count = || raised.load(Ordering::Relaxed);
        // Bytes with interrupts off: no interrupt.
        BusDevice::write(&mut s, DATA, b"a");
        assert_eq!(count(), 0);
        // Enabling THR-empty while THR is empty raises it (the driver's THRE test), and
        // re-enabling it raises it again.
        BusDevice::write(&mut s, IER, &[IER_THRE]);
        assert_eq!(count(), 1);
        BusDevice::write(&mut s, IER, &[0]);
        BusDevice::write(&mut s, IER, &[IER_THRE]);
        assert_eq!(count(), 2);
        // The ISR reads IIR (acknowledging THRE), sends a byte: THR empty again → new edge.
        let mut iir = [0];
        BusDevice::read(&mut s, IIR_FCR, &mut iir);
        assert_eq!(iir[0] & 0x0f, IIR_THRE);
        BusDevice::write(&mut s, DATA, b"b");
        assert_eq!(count(), 3);
        // More bytes before the next IIR read: still the same pending condition.
        BusDevice::write(&mut s, DATA, b"c");
        assert_eq!(count(), 3);
        // Input with receive interrupts on raises it; the line survives a reset.
        BusDevice::write(&mut s, IER, &[IER_RDA]);
        BusDevice::read(&mut s, IIR_FCR, &mut iir);
        s.reset();
        assert!(s.has_interrupt_line());
        BusDevice::write(&mut s, IER, &[IER_RDA]);
        let before = count();
        s.enqueue_input(b"x");
        assert_eq!(count(), before + 1);
        assert_eq!(buf.contents(), b"abc");
    }

    #[test]
    fn thr_writes_reach_output_and_lsr_says_empty() {
        let (mut s, buf) = uart();
        assert_eq!(s.read_register(LSR) & (LSR_THRE | LSR_TEMT), 0x60);
        for b in b"hi\n" {
            s.write_register(DATA, *b);
        }
        assert_eq!(buf.contents(), b"hi\n");
    }

    #[test]
    fn dlab_switches_data_and_ier_to_divisor() {
        let (mut s, buf) = uart();
        s.write_register(LCR, 0x83);
        s.write_register(DATA, 0x01);
        s.write_register(IER, 0x00);
        assert_eq!(s.read_register(DATA), 0x01);
        assert_eq!(s.read_register(IER), 0x00);
        s.write_register(LCR, 0x03);
        assert!(buf.contents().is_empty(), "divisor writes are not output");
        s.write_register(IER, 0xff);
        assert_eq!(s.read_register(IER), 0x0f);
        assert_eq!(s.read_register(LCR), 0x03);
    }

    #[test]
    fn input_sets_dr_and_rda_interrupt() {
        let (mut s, _) = uart();
        assert_eq!(s.read_register(IIR_FCR), IIR_NONE);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(s.read_register(LSR) & LSR_DR, LSR_DR);
        assert!(!s.interrupt_pending(), "RDA not enabled yet");
        s.write_register(IER, IER_RDA);
        assert_eq!(s.read_register(IIR_FCR), IIR_RDA);
        assert_eq!(s.read_register(DATA), b'a');
        assert_eq!(s.read_register(DATA), b'b');
        assert_eq!(s.read_register(LSR) & LSR_DR, 0);
        assert_eq!(s.read_register(IIR_FCR), IIR_NONE);
        assert_eq!(s.read_register(DATA), 0, "empty RBR reads 0");
    }

    #[test]
    fn thre_interrupt_is_acknowledged_by_reading_iir() {
        let (mut s, _) = uart();
        s.write_register(IER, IER_THRE);
        assert!(s.interrupt_pending());
        assert_eq!(s.read_register(IIR_FCR), IIR_THRE);
        assert!(!s.interrupt_pending());
        s.write_register(DATA, b'x');
        assert_eq!(s.read_register(IIR_FCR), IIR_THRE);
        s.write_register(IIR_FCR, FCR_ENABLE);
        assert_eq!(s.read_register(IIR_FCR), IIR_FIFO_ENABLED | IIR_NONE);
    }

    #[test]
    fn rx_fifo_is_bounded_and_clearable() {
        let (mut s, _) = uart();
        assert_eq!(s.enqueue_input(&[7; 100]), RX_FIFO_CAPACITY);
        assert_eq!(s.enqueue_input(b"x"), 0);
        s.write_register(IIR_FCR, FCR_CLEAR_RX);
        assert_eq!(s.read_register(LSR) & LSR_DR, 0);
    }

    #[test]
    fn loopback_routes_thr_to_rbr_and_mcr_to_msr() {
        let (mut s, buf) = uart();
        assert_eq!(s.read_register(MSR), 0xb0);
        s.write_register(MCR, MCR_LOOP | 0x0f);
        assert_eq!(s.read_register(MCR), 0x1f);
        assert_eq!(s.read_register(MSR), 0xf0);
        s.write_register(DATA, b'q');
        assert_eq!(s.read_register(DATA), b'q');
        assert!(buf.contents().is_empty());
        s.write_register(MCR, MCR_LOOP | 0x01);
        assert_eq!(s.read_register(MSR), MSR_DSR);
    }

    #[test]
    fn scratch_register_and_read_only_registers() {
        let (mut s, _) = uart();
        s.write_register(SCR, 0x5a);
        assert_eq!(s.read_register(SCR), 0x5a);
        s.write_register(LSR, 0);
        s.write_register(MSR, 0);
        assert_eq!(s.read_register(LSR), 0x60);
        assert_eq!(s.read_register(MSR), 0xb0);
        s.reset();
        assert_eq!(s.read_register(SCR), 0);
    }

    #[test]
    fn string_io_is_taken_byte_by_byte() {
        let (mut s, buf) = uart();
        BusDevice::write(&mut s, DATA, b"abc");
        assert_eq!(buf.contents(), b"abc");
        s.enqueue_input(b"xy");
        let mut two = [0u8; 2];
        BusDevice::read(&mut s, DATA, &mut two);
        assert_eq!(&two, b"xy");
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_output_is_counted_not_fatal() {
        let mut s = Serial::new(Box::new(Broken));
        s.write_register(DATA, b'a');
        s.write_register(DATA, b'b');
        assert_eq!(s.write_errors(), 2);
        assert_eq!(s.read_register(LSR) & LSR_THRE, LSR_THRE);
    }
}
