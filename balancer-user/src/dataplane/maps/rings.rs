//! `RINGS`: every VIP's double-buffered Maglev ring in one mmapable array, seen
//! from here as a flat `[u32]` (the map stores slot pairs in `u64` elements with
//! no padding, so the memory is exactly that).
//!
//! Writing a 65537-slot ring through `bpf(BPF_MAP_UPDATE_ELEM)` would take 65537
//! system calls; the array is created with `BPF_F_MMAPABLE`, so a ring is one
//! `memcpy` into shared memory. Only the inactive half is ever written; the data
//! path reads the half named by the VIP's `ring_gen`, which userspace flips
//! afterwards with one `VIPS` update (a full barrier).

use std::{
    collections::BTreeMap,
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;
use balancer_common::ring_base;

use super::{MapsError, Result, mmap::Mmap};

/// The mapped `RINGS` array with a shadow of every half written.
pub struct RingMap {
    mem: Mmap,
    len: usize,
    ring_size: u32,
    shadow: BTreeMap<(u32, u8), Vec<u32>>,
}

impl RingMap {
    pub(super) fn new(map: MapData, ring_size: u32, len: u32) -> Result<Self> {
        let mem = Mmap::new(map, "RINGS", len as usize * 4)?;
        Ok(Self {
            mem,
            len: len as usize,
            ring_size,
            shadow: BTreeMap::new(),
        })
    }

    /// Ring size M.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    fn range(&self, vip_index: u32, generation: u8) -> Result<usize> {
        let start =
            ring_base(vip_index, generation, self.ring_size).ok_or(MapsError::OutOfRange {
                name: "RINGS",
                index: vip_index,
                size: self.len as u32,
            })? as usize;
        if start + self.ring_size as usize > self.len {
            return Err(MapsError::OutOfRange {
                name: "RINGS",
                index: vip_index,
                size: self.len as u32,
            });
        }
        Ok(start)
    }

    /// Writes one half. The caller must make sure the data path is not reading
    /// it (it is the inactive half, and the last flip is a grace period old).
    pub fn write(&mut self, vip_index: u32, generation: u8, table: &[u32]) -> Result<()> {
        if table.len() != self.ring_size as usize {
            return Err(MapsError::OutOfRange {
                name: "RINGS",
                index: table.len() as u32,
                size: self.ring_size,
            });
        }
        let start = self.range(vip_index, generation)?;
        // SAFETY: range() checked start + M <= len, the mapping's size in slots.
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.as_ptr(),
                self.mem.ptr::<u32>().add(start),
                table.len(),
            );
        }
        fence(Ordering::SeqCst);
        self.shadow.insert((vip_index, generation), table.to_vec());
        Ok(())
    }

    /// Reads one half from the kernel's memory.
    pub fn read(&self, vip_index: u32, generation: u8) -> Result<Vec<u32>> {
        let start = self.range(vip_index, generation)?;
        let mut out = vec![0u32; self.ring_size as usize];
        // SAFETY: as in write; reading u32 slots the kernel may read too.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mem.ptr::<u32>().add(start),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        Ok(out)
    }

    /// One element of the map as the data path reads it: the slot pair
    /// `2i, 2i + 1` (for instruction-level tools that replay the data path).
    pub fn element(&self, i: u32) -> Option<u64> {
        let lo = 2 * i as usize;
        if lo + 1 >= self.len {
            return None;
        }
        // SAFETY: lo + 1 < len, the mapping's size in slots.
        let (a, b) = unsafe {
            let p = self.mem.ptr::<u32>().add(lo);
            (p.read_volatile(), p.add(1).read_volatile())
        };
        Some(a as u64 | (b as u64) << 32)
    }

    /// The shadow of a half, if this process wrote or adopted it.
    pub fn shadow(&self, vip_index: u32, generation: u8) -> Option<&[u32]> {
        self.shadow
            .get(&(vip_index, generation))
            .map(|v| v.as_slice())
    }

    /// Takes the kernel's content of a half as its shadow (after adoption).
    pub fn adopt(&mut self, vip_index: u32, generation: u8) -> Result<()> {
        let t = self.read(vip_index, generation)?;
        self.shadow.insert((vip_index, generation), t);
        Ok(())
    }

    /// Forgets a VIP's shadows (the VIP was removed).
    pub fn forget(&mut self, vip_index: u32) {
        self.shadow.remove(&(vip_index, 0));
        self.shadow.remove(&(vip_index, 1));
    }

    pub(super) fn verify(&self, out: &mut Vec<String>) {
        for (&(vip, generation), want) in &self.shadow {
            match self.read(vip, generation) {
                Ok(got) if &got == want => {}
                _ => out.push(format!(
                    "RINGS[vip {vip} gen {generation}]: kernel and shadow differ"
                )),
            }
        }
    }
}
