//! A small bus of non-overlapping address ranges, one device per range.
//!
//! The bus is built before a run and copied into each vCPU thread; it is never changed
//! while vCPUs run, so it has no lock of its own. Each device sits behind its own mutex.
//!
//! Lock order (outer first): a device's mutex (or the fallback's: the PCI root), then the
//! VM's run control (`RunControl::request`). A vCPU thread holds at most one bus device
//! mutex at a time, and a device never calls back into a bus. A bus may have a fallback
//! for accesses no range holds: the PCI BARs, whose placement changes while vCPUs run
//! (the ranges themselves never do).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{HypervisorError, Result};

/// A device on a bus. `offset` is relative to the start of the device's range; `data`'s
/// length is the access width (or, for string port I/O, the whole transfer).
pub trait BusDevice: Send {
    /// The guest reads: fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Where a bus sends an access no range holds (the PCI BARs, which move while the guest
/// runs). Takes its own lock; returns `false` if it holds nothing there either.
pub trait BusFallback: Send + Sync {
    /// The guest reads at absolute address `addr`.
    fn read(&self, addr: u64, data: &mut [u8]) -> bool;
    /// The guest writes at absolute address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// `[base, base + len)`, non-empty and not wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    base: u64,
    len: u64,
}

impl BusRange {
    /// A checked range.
    pub fn new(base: u64, len: u64) -> Result<Self> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(HypervisorError::InvalidBusRange { base, len });
        }
        Ok(Self { base, len })
    }

    /// First address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: ranges are never empty. (Here for clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Last address inside the range (no overflow: checked in `new`).
    pub fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    /// Whether `[addr, addr + size)` lies wholly inside the range.
    pub fn contains_access(&self, addr: u64, size: u64) -> bool {
        if size == 0 || addr < self.base {
            return false;
        }
        match addr.checked_add(size - 1) {
            Some(end) => end <= self.last(),
            None => false,
        }
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

/// Ranges to devices.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, (BusRange, SharedDevice)>,
    fallback: Option<Arc<dyn BusFallback>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` on `range`; refuses a range overlapping one already present.
    pub fn insert(&mut self, range: BusRange, device: SharedDevice) -> Result<()> {
        if let Some(other) = self.overlapping(&range) {
            return Err(HypervisorError::BusOverlap {
                base: range.base,
                len: range.len,
                other_base: other.base,
                other_len: other.len,
            });
        }
        self.devices.insert(range.base, (range, device));
        Ok(())
    }

    /// Sends accesses no range holds to `fallback` (replacing any earlier one).
    pub fn set_fallback(&mut self, fallback: Arc<dyn BusFallback>) {
        self.fallback = Some(fallback);
    }

    /// A range already on the bus that overlaps `range`, if any.
    pub fn overlapping(&self, range: &BusRange) -> Option<BusRange> {
        // Only the last range starting at or before `range.last()` can overlap, since
        // ranges on the bus are disjoint and sorted.
        self.devices
            .range(..=range.last())
            .next_back()
            .map(|(_, (r, _))| *r)
            .filter(|r| r.overlaps(range))
    }

    /// The device whose range holds the whole access, and the offset into it.
    pub fn lookup(&self, addr: u64, size: u64) -> Option<(u64, &SharedDevice)> {
        let (_, (range, device)) = self.devices.range(..=addr).next_back()?;
        range
            .contains_access(addr, size)
            .then(|| (addr - range.base, device))
    }

    /// Dispatches a read; `false` if nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.lookup(addr, data.len() as u64) else {
            return self.fallback.as_ref().is_some_and(|f| f.read(addr, data));
        };
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
        true
    }

    /// Dispatches a write; `false` if nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, device)) = self.lookup(addr, data.len() as u64) else {
            return self.fallback.as_ref().is_some_and(|f| f.write(addr, data));
        };
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        assert!(matches!(
            BusRange::new(0x10, 0),
            Err(HypervisorError::InvalidBusRange { .. })
        ));
        assert!(BusRange::new(u64::MAX, 2).is_err());
        assert_eq!(BusRange::new(u64::MAX, 1).unwrap().last(), u64::MAX);
        assert_eq!(BusRange::new(0, u64::MAX).unwrap().last(), u64::MAX - 1);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(BusRange::new(0x100, 0x10).unwrap(), dev())
            .unwrap();
        bus.insert(BusRange::new(0x200, 0x10).unwrap(), dev())
            .unwrap();
        for (base, len) in [
            (0x100, 0x10),
            (0x10f, 1),
            (0xf0, 0x11),
            (0x108, 0x100),
            (0x0, 0x1000),
            (0x20f, 5),
        ] {
            let err = bus
                .insert(BusRange::new(base, len).unwrap(), dev())
                .unwrap_err();
            assert!(
                matches!(err, HypervisorError::BusOverlap { .. }),
                "{base:#x}+{len:#x}: {err}"
            );
        }
        // Touching but not overlapping on both sides is fine.
        bus.insert(BusRange::new(0xf0, 0x10).unwrap(), dev())
            .unwrap();
        bus.insert(BusRange::new(0x110, 0xf0).unwrap(), dev())
            .unwrap();
        bus.insert(BusRange::new(0x210, 1).unwrap(), dev()).unwrap();
    }

    #[test]
    fn lookups_at_range_edges() {
        let mut bus = Bus::new();
        let a = dev();
        bus.insert(BusRange::new(0x3f8, 8).unwrap(), a.clone())
            .unwrap();
        assert!(bus.lookup(0x3f7, 1).is_none());
        assert_eq!(bus.lookup(0x3f8, 1).map(|(o, _)| o), Some(0));
        assert_eq!(bus.lookup(0x3ff, 1).map(|(o, _)| o), Some(7));
        assert!(bus.lookup(0x400, 1).is_none());
        // An access that starts inside but runs past the end is not mapped.
        assert_eq!(bus.lookup(0x3fc, 4).map(|(o, _)| o), Some(4));
        assert!(bus.lookup(0x3fd, 4).is_none());
        assert!(bus.lookup(u64::MAX, 2).is_none());

        let mut data = [0u8; 2];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2, 2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(a.lock().unwrap().last_write, Some((7, vec![9])));
        assert!(!bus.write(0x3f0, &[1]));
    }

    /// Holds [0x1000, 0x1010) at absolute addresses.
    struct Window;

    impl BusFallback for Window {
        fn read(&self, addr: u64, data: &mut [u8]) -> bool {
            data.fill(addr as u8);
            (0x1000..0x1010).contains(&addr)
        }
        fn write(&self, addr: u64, _data: &[u8]) -> bool {
            (0x1000..0x1010).contains(&addr)
        }
    }

    #[test]
    fn misses_go_to_the_fallback() {
        let mut bus = Bus::new();
        let a = dev();
        bus.insert(BusRange::new(0x1008, 4).unwrap(), a.clone())
            .unwrap();
        let mut data = [0u8; 1];
        assert!(!bus.read(0x1000, &mut data), "no fallback yet");
        bus.set_fallback(Arc::new(Window));
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [0x04], "absolute address");
        assert!(bus.read(0x1009, &mut data));
        assert_eq!(data, [1], "a range wins over the fallback");
        assert!(bus.write(0x100f, &[1]));
        assert!(!bus.write(0x1010, &[1]), "the fallback holds nothing there");
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn range_at_top_of_address_space() {
        let mut bus = Bus::new();
        bus.insert(BusRange::new(u64::MAX - 3, 4).unwrap(), dev())
            .unwrap();
        assert_eq!(bus.lookup(u64::MAX, 1).map(|(o, _)| o), Some(3));
        assert!(bus.lookup(u64::MAX, 2).is_none());
        assert!(bus
            .insert(BusRange::new(u64::MAX, 1).unwrap(), dev())
            .is_err());
    }
}
