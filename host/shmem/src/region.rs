use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vesper_shared_abi::{
    RegionHeader, ABI_VERSION, HOST_STATE_READY, MIN_REGION_SIZE, REGION_MAGIC,
};
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegion;
use vm_memory::{ByteValued, Bytes, FileOffset, VolatileMemory, VolatileSlice};

use crate::ShmemError;

/// A shared region mapped into the host. All access is bounds-checked.
#[derive(Debug)]
pub struct SharedRegion {
    mapping: MmapRegion<()>,
    file: File,
    size: u64,
}

impl SharedRegion {
    /// Creates a zeroed region of `size` bytes backed by a memfd named `name`, and
    /// writes the host's part of the header (magic, ABI version, size, host ready).
    pub fn create(name: &str, size: u64) -> Result<Self, ShmemError> {
        if size < MIN_REGION_SIZE || !size.is_power_of_two() || size > (1 << 40) {
            return Err(ShmemError::BadSize(size));
        }
        let fd: OwnedFd =
            memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(|e| ShmemError::Create(e.into()))?;
        let file = File::from(fd);
        nix::unistd::ftruncate(&file, size as i64).map_err(|e| ShmemError::Create(e.into()))?;
        let region = Self::map(file, size)?;
        region.write_obj(
            RegionHeader {
                magic: REGION_MAGIC,
                abi_version: ABI_VERSION,
                host_state: HOST_STATE_READY,
                region_size: size,
                ..Default::default()
            },
            0,
        )?;
        Ok(region)
    }

    /// Offers `HOST_FEATURE_*` bits in the header (before the guest starts): a transport
    /// that owns guest RAM offers `HOST_FEATURE_GUEST_FRAMES`.
    pub fn offer_host_features(&self, features: u32) -> Result<(), ShmemError> {
        self.write_obj(
            features,
            std::mem::offset_of!(RegionHeader, host_features) as u64,
        )
    }

    /// Maps an existing region file of `size` bytes without writing anything.
    pub fn map(file: File, size: u64) -> Result<Self, ShmemError> {
        let mapping_file = file.try_clone().map_err(ShmemError::Create)?;
        let mapping = MmapRegion::<()>::from_file(FileOffset::new(mapping_file, 0), size as usize)
            .map_err(ShmemError::Map)?;
        Ok(Self {
            mapping,
            file,
            size,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file descriptor backing the region (handed to the hypervisor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn slice(&self) -> VolatileSlice<'_, BS<'_, ()>> {
        self.mapping.as_volatile_slice()
    }

    fn check(&self, offset: u64, len: u64) -> Result<usize, ShmemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(offset as usize),
            _ => Err(ShmemError::OutOfBounds { offset, len }),
        }
    }

    /// Copies a `T` out of the region.
    pub fn read_obj<T: ByteValued>(&self, offset: u64) -> Result<T, ShmemError> {
        let at = self.check(offset, std::mem::size_of::<T>() as u64)?;
        self.slice()
            .read_obj(at)
            .map_err(|_| ShmemError::OutOfBounds {
                offset,
                len: std::mem::size_of::<T>() as u64,
            })
    }

    /// Copies a `T` into the region.
    pub fn write_obj<T: ByteValued>(&self, val: T, offset: u64) -> Result<(), ShmemError> {
        let at = self.check(offset, std::mem::size_of::<T>() as u64)?;
        self.slice()
            .write_obj(val, at)
            .map_err(|_| ShmemError::OutOfBounds {
                offset,
                len: std::mem::size_of::<T>() as u64,
            })
    }

    /// Copies `buf.len()` bytes out of the region.
    pub fn read_slice(&self, buf: &mut [u8], offset: u64) -> Result<(), ShmemError> {
        let at = self.check(offset, buf.len() as u64)?;
        self.slice()
            .read_slice(buf, at)
            .map_err(|_| ShmemError::OutOfBounds {
                offset,
                len: buf.len() as u64,
            })
    }

    /// Copies `buf` into the region.
    pub fn write_slice(&self, buf: &[u8], offset: u64) -> Result<(), ShmemError> {
        let at = self.check(offset, buf.len() as u64)?;
        self.slice()
            .write_slice(buf, at)
            .map_err(|_| ShmemError::OutOfBounds {
                offset,
                len: buf.len() as u64,
            })
    }

    /// Atomic load of a `u32` (ring indices, state words).
    pub fn load_u32(&self, offset: u64, order: Ordering) -> Result<u32, ShmemError> {
        let at = self.check(offset, 4)?;
        self.slice()
            .load(at, order)
            .map_err(|_| ShmemError::OutOfBounds { offset, len: 4 })
    }

    /// Atomic store of a `u32`.
    pub fn store_u32(&self, val: u32, offset: u64, order: Ordering) -> Result<(), ShmemError> {
        let at = self.check(offset, 4)?;
        self.slice()
            .store(val, at, order)
            .map_err(|_| ShmemError::OutOfBounds { offset, len: 4 })
    }

    /// Atomic load of a `u64` (relay positions).
    pub fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, ShmemError> {
        let at = self.check(offset, 8)?;
        self.slice()
            .load(at, order)
            .map_err(|_| ShmemError::OutOfBounds { offset, len: 8 })
    }

    /// Atomic store of a `u64`.
    pub fn store_u64(&self, val: u64, offset: u64, order: Ordering) -> Result<(), ShmemError> {
        let at = self.check(offset, 8)?;
        self.slice()
            .store(val, at, order)
            .map_err(|_| ShmemError::OutOfBounds { offset, len: 8 })
    }

    /// For code that plays the guest (tests, benchmarks): one bounds check and a plain
    /// copy, as the guest's C writer does. Host code uses [`SharedRegion::write_slice`].
    #[doc(hidden)]
    pub fn guest_write(&self, buf: &[u8], offset: u64) -> Result<(), ShmemError> {
        let at = self.check(offset, buf.len() as u64)?;
        // SAFETY: `check` proved [at, at + len) lies inside the mapping, which lives as
        // long as `self`; `buf` is host memory, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.mapping.as_ptr().add(at), buf.len())
        };
        Ok(())
    }

    /// For code that plays the guest: an atomic 64-bit store with one bounds check.
    #[doc(hidden)]
    pub fn guest_store_u64(
        &self,
        val: u64,
        offset: u64,
        order: Ordering,
    ) -> Result<(), ShmemError> {
        let at = self.check(offset, 8)?;
        if at % 8 != 0 {
            return Err(ShmemError::OutOfBounds { offset, len: 8 });
        }
        // SAFETY: in bounds (checked), 8-byte aligned (the mapping is page-aligned and
        // `at` is a multiple of 8), and only ever accessed atomically or volatilely.
        let word =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(self.mapping.as_ptr().add(at).cast()) };
        word.store(val, order);
        Ok(())
    }

    /// A copy of the header, taken once.
    pub fn header(&self) -> Result<RegionHeader, ShmemError> {
        self.read_obj(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_region_carries_host_identity() {
        let r = SharedRegion::create("t", MIN_REGION_SIZE).unwrap();
        let h = r.header().unwrap();
        assert_eq!(h.magic, REGION_MAGIC);
        assert_eq!(h.abi_version, ABI_VERSION);
        assert_eq!(h.host_state, HOST_STATE_READY);
        assert_eq!(h.region_size, MIN_REGION_SIZE);
        assert_eq!(h.generation, 0);
        assert_eq!(h.host_features, 0);
        r.offer_host_features(vesper_shared_abi::HOST_FEATURE_GUEST_FRAMES)
            .unwrap();
        let h = r.header().unwrap();
        assert_eq!(
            h.host_features,
            vesper_shared_abi::HOST_FEATURE_GUEST_FRAMES
        );
        assert_eq!(h.magic, REGION_MAGIC, "only the feature word changed");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            SharedRegion::create("t", 3 << 20),
            Err(ShmemError::BadSize(_))
        ));
        assert!(matches!(
            SharedRegion::create("t", 1 << 20),
            Err(ShmemError::BadSize(_))
        ));
    }

    #[test]
    fn accesses_past_the_end_fail_instead_of_touching_memory() {
        let r = SharedRegion::create("t", MIN_REGION_SIZE).unwrap();
        let mut buf = [0u8; 8];
        assert!(r.read_slice(&mut buf, MIN_REGION_SIZE - 4).is_err());
        assert!(r.read_slice(&mut buf, u64::MAX - 2).is_err());
        assert!(r.write_slice(&buf, MIN_REGION_SIZE).is_err());
        assert!(r.load_u32(MIN_REGION_SIZE - 2, Ordering::Acquire).is_err());
        r.write_slice(&[1, 2, 3, 4], MIN_REGION_SIZE - 4).unwrap();
        assert_eq!(
            r.load_u32(MIN_REGION_SIZE - 4, Ordering::Acquire).unwrap(),
            0x04030201
        );
    }
}
