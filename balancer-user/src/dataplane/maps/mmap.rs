//! Shared-memory views of mmapable BPF arrays (`RINGS`, `FLOWS`).

use std::{num::NonZeroUsize, os::fd::AsFd, ptr::NonNull};

use aya::maps::MapData;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{MapsError, Result};

/// A read-write mapping of a whole BPF array created with `BPF_F_MMAPABLE`.
pub struct Mmap {
    _map: MapData,
    base: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; callers take
// &mut self to write and only copy plain data in and out.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `bytes` bytes of `map`.
    pub fn new(map: MapData, name: &'static str, bytes: usize) -> Result<Self> {
        let len = NonZeroUsize::new(bytes).ok_or(MapsError::OutOfRange {
            name,
            index: 0,
            size: 0,
        })?;
        // SAFETY: maps a BPF array created with BPF_F_MMAPABLE; the kernel
        // checks the length against the map's size.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(MapsError::Mmap)?;
        Ok(Self {
            _map: map,
            base: ptr.cast(),
            bytes,
        })
    }

    /// The start of the mapping as `*mut T`. Callers stay within
    /// [`Self::bytes`] and respect `T`'s alignment (the mapping is page-aligned).
    pub fn ptr<T>(&self) -> *mut T {
        self.base.as_ptr().cast()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        let _ = unsafe { munmap(self.base.cast(), self.bytes) };
    }
}
