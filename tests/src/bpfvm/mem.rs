//! The memory model: tagged 64-bit pointers over separate regions.
//!
//! A pointer is `region << 32 | (2^31 + offset)`. Region ids start at 1, so
//! no valid pointer is NULL; arithmetic is plain `u64` arithmetic, and a
//! pointer is only checked when it is dereferenced, against its region's
//! bounds (the bias keeps a pointer that went below its region's start in
//! that region, so the error names the right one). The regions are:
//!
//! - the `xdp_md` context (read only; a 32-bit load of `data`, `data_end` or
//!   `data_meta` yields the whole tagged pointer, as the verifier's rewrite
//!   does in the kernel);
//! - the packet buffer: [`HEADROOM`] bytes, the frame, then [`TAILROOM`]; only
//!   `data_meta..data_end` may be touched;
//! - one region per global section (`.rodata` read only);
//! - a handle per map (`ld_imm64` of a map yields it; it cannot be
//!   dereferenced);
//! - one stack per call frame ([`STACK_SIZE`] bytes, r10 at its top);
//! - one region per map value a run looked up or inserted.

use std::collections::HashMap;

use super::elf::Program;

/// Headroom before the frame, as the kernel leaves (`XDP_PACKET_HEADROOM`).
pub const HEADROOM: usize = 256;
/// Room after the frame that `bpf_xdp_adjust_tail` may grow into.
pub const TAILROOM: usize = 256;
/// Bytes of stack per call frame.
pub const STACK_SIZE: usize = 512;
/// `sizeof(struct xdp_frame)`, kept free at the start of the headroom: the
/// kernel's `bpf_xdp_adjust_head` never lets `data` reach below it.
pub const XDP_FRAME_SIZE: usize = 40;
/// The Ethernet header `bpf_xdp_adjust_head`/`_tail` always leave.
const ETH_HLEN: usize = 14;

/// Region id of the `xdp_md` context.
const CTX: u32 = 1;
/// Region id of the packet buffer.
const PACKET: u32 = 2;

/// Why a memory access failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The address names no region (e.g. NULL, or a scalar).
    #[error("no memory there")]
    Unmapped,
    /// The bytes are outside the region's valid part.
    #[error("bytes {start}..{end} are outside {region} (valid {lo}..{hi})")]
    OutOfBounds {
        /// The region.
        region: String,
        /// First byte accessed (offset in the region).
        start: i64,
        /// One past the last byte accessed.
        end: i64,
        /// First valid offset.
        lo: i64,
        /// One past the last valid offset.
        hi: i64,
    },
    /// A store to read-only memory.
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// A context access other than a 32-bit load of a known field.
    #[error("xdp_md cannot be accessed with {size} bytes at offset {offset}")]
    Context {
        /// Offset in `struct xdp_md`.
        offset: i64,
        /// Access size.
        size: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ctx,
    Packet,
    Global(usize),
    MapHandle(usize),
    Stack(usize),
    Value(usize),
}

#[derive(Debug)]
struct Region {
    kind: Kind,
    data: Vec<u8>,
    writable: bool,
}

/// All the memory of one run.
pub(crate) struct Memory<'p> {
    prog: &'p Program,
    regions: Vec<Region>,
    /// Offsets of `data`, `data_end` and `data_meta` in the packet buffer.
    data: usize,
    data_end: usize,
    data_meta: usize,
    /// Stack region of each call depth, allocated on first use.
    stacks: Vec<u32>,
    /// (map, key) → the local copy's region, or None if the key is absent.
    values: HashMap<(usize, Vec<u8>), Option<u32>>,
}

/// Offsets are stored with this bias in the low 32 bits of a pointer.
const BIAS: i64 = 1 << 31;

fn tag(region: u32, off: usize) -> u64 {
    (u64::from(region) << 32) | (BIAS + off as i64) as u64
}

/// The region id and offset of a pointer.
fn split(addr: u64) -> (u32, i64) {
    ((addr >> 32) as u32, (addr & 0xffff_ffff) as i64 - BIAS)
}

impl<'p> Memory<'p> {
    /// Memory for running `prog` on `frame`: context, packet, globals (fresh
    /// copies of the program's bytes) and map handles.
    pub fn new(prog: &'p Program, frame: &[u8]) -> Self {
        let mut packet = vec![0; HEADROOM + frame.len() + TAILROOM];
        packet[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut regions = vec![
            Region {
                kind: Kind::Ctx,
                data: Vec::new(),
                writable: false,
            },
            Region {
                kind: Kind::Packet,
                data: packet,
                writable: true,
            },
        ];
        for (i, g) in prog.globals.iter().enumerate() {
            regions.push(Region {
                kind: Kind::Global(i),
                data: g.bytes.clone(),
                writable: g.writable,
            });
        }
        for i in 0..prog.maps.len() {
            regions.push(Region {
                kind: Kind::MapHandle(i),
                data: Vec::new(),
                writable: false,
            });
        }
        Memory {
            prog,
            regions,
            data: HEADROOM,
            data_end: HEADROOM + frame.len(),
            data_meta: HEADROOM,
            stacks: Vec::new(),
            values: HashMap::new(),
        }
    }

    fn add(&mut self, kind: Kind, data: Vec<u8>, writable: bool) -> u32 {
        self.regions.push(Region {
            kind,
            data,
            writable,
        });
        self.regions.len() as u32
    }

    /// The pointer to the context (r1 at entry).
    pub fn ctx(&self) -> u64 {
        tag(CTX, 0)
    }

    /// The address of `offset` in global section `section`.
    pub fn global(&self, section: usize, offset: u64) -> u64 {
        tag(3 + section as u32, 0).wrapping_add(offset)
    }

    /// The handle of map `map` (what `ld_imm64` of the map loads).
    pub fn map_handle(&self, map: usize) -> u64 {
        tag(3 + (self.prog.globals.len() + map) as u32, 0)
    }

    /// The map a handle names.
    pub fn map_of(&self, addr: u64) -> Option<usize> {
        match self.region(addr)?.kind {
            Kind::MapHandle(m) if split(addr).1 == 0 => Some(m),
            _ => None,
        }
    }

    fn region(&self, addr: u64) -> Option<&Region> {
        let id = (addr >> 32) as usize;
        id.checked_sub(1).and_then(|i| self.regions.get(i))
    }

    /// The frame pointer (r10) of a fresh, zeroed stack at call depth `depth`.
    pub fn stack(&mut self, depth: usize) -> u64 {
        while self.stacks.len() <= depth {
            let id = self.add(Kind::Stack(self.stacks.len()), vec![0; STACK_SIZE], true);
            self.stacks.push(id);
        }
        let id = self.stacks[depth];
        self.regions[id as usize - 1].data.fill(0);
        tag(id, STACK_SIZE)
    }

    fn name(&self, kind: Kind) -> String {
        match kind {
            Kind::Ctx => "xdp_md".into(),
            Kind::Packet => "the packet".into(),
            Kind::Global(g) => format!("global section {}", self.prog.globals[g].name),
            Kind::MapHandle(m) => format!("the handle of map {}", self.prog.maps[m].name),
            Kind::Stack(d) => format!("stack frame {d}"),
            Kind::Value(m) => format!("a value of map {}", self.prog.maps[m].name),
        }
    }

    /// Checks an access of `size` bytes at `addr`; returns (region index, offset).
    fn check(&self, addr: u64, size: usize, write: bool) -> Result<(usize, usize), Fault> {
        let r = self.region(addr).ok_or(Fault::Unmapped)?;
        let (id, start) = split(addr);
        let end = start + size as i64;
        if r.kind == Kind::Ctx {
            return Err(Fault::Context {
                offset: start,
                size,
            });
        }
        let (lo, hi) = match r.kind {
            Kind::Packet => (self.data_meta, self.data_end),
            _ => (0, r.data.len()),
        };
        if start < lo as i64 || end > hi as i64 {
            return Err(Fault::OutOfBounds {
                region: self.name(r.kind),
                start,
                end,
                lo: lo as i64,
                hi: hi as i64,
            });
        }
        if write && !r.writable {
            return Err(Fault::ReadOnly(self.name(r.kind)));
        }
        Ok((id as usize - 1, start as usize))
    }

    /// Loads `size` (1, 2, 4 or 8) bytes at `addr`, zero-extended.
    pub fn load(&self, addr: u64, size: usize) -> Result<u64, Fault> {
        if let (CTX, offset) = split(addr) {
            return self.load_ctx(offset, size);
        }
        let (r, o) = self.check(addr, size, false)?;
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&self.regions[r].data[o..o + size]);
        Ok(u64::from_le_bytes(b))
    }

    fn load_ctx(&self, offset: i64, size: usize) -> Result<u64, Fault> {
        if size != 4 {
            return Err(Fault::Context { offset, size });
        }
        Ok(match offset {
            0 => tag(PACKET, self.data),
            4 => tag(PACKET, self.data_end),
            8 => tag(PACKET, self.data_meta),
            12 => 1,      // ingress_ifindex
            16 | 20 => 0, // rx_queue_index, egress_ifindex
            _ => return Err(Fault::Context { offset, size }),
        })
    }

    /// Stores the low `size` bytes of `value` at `addr`.
    pub fn store(&mut self, addr: u64, size: usize, value: u64) -> Result<(), Fault> {
        self.write(addr, &value.to_le_bytes()[..size])
    }

    /// Copies `len` bytes out of memory (a helper's key or value argument).
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, Fault> {
        let (r, o) = self.check(addr, len, false)?;
        Ok(self.regions[r].data[o..o + len].to_vec())
    }

    /// Copies `bytes` into memory.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Fault> {
        let (r, o) = self.check(addr, bytes.len(), true)?;
        self.regions[r].data[o..o + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// The run's copy of `(map, key)`: `Some(Some(ptr))` if present,
    /// `Some(None)` if known absent, `None` if the run has not seen it yet.
    pub fn cached_value(&self, map: usize, key: &[u8]) -> Option<Option<u64>> {
        self.values
            .get(&(map, key.to_vec()))
            .map(|v| v.map(|id| tag(id, 0)))
    }

    /// Stores `value` as the run's copy of `(map, key)`, in place if the run
    /// already has one (so earlier pointers see it); returns its address.
    pub fn put_value(&mut self, map: usize, key: &[u8], value: Vec<u8>) -> u64 {
        if let Some(Some(id)) = self.values.get(&(map, key.to_vec())) {
            let id = *id;
            self.regions[id as usize - 1].data = value;
            return tag(id, 0);
        }
        let id = self.add(Kind::Value(map), value, true);
        self.values.insert((map, key.to_vec()), Some(id));
        tag(id, 0)
    }

    /// Records `(map, key)` as absent for the rest of the run.
    pub fn set_absent(&mut self, map: usize, key: &[u8]) {
        self.values.insert((map, key.to_vec()), None);
    }

    /// `bpf_xdp_adjust_head`: moves `data` (and `data_meta` with it) by
    /// `delta`; false (the helper's -EINVAL) if that leaves the buffer or
    /// leaves less than an Ethernet header.
    pub fn adjust_head(&mut self, delta: i64) -> bool {
        let meta_len = self.data - self.data_meta;
        let data = self.data as i64 + delta;
        if data < (XDP_FRAME_SIZE + meta_len) as i64
            || data > self.data_end as i64 - ETH_HLEN as i64
        {
            return false;
        }
        let data = data as usize;
        if meta_len > 0 {
            let buf = &mut self.regions[PACKET as usize - 1].data;
            buf.copy_within(self.data_meta..self.data, data - meta_len);
        }
        self.data = data;
        self.data_meta = data - meta_len;
        true
    }

    /// `bpf_xdp_adjust_tail`: moves `data_end` by `delta`, zeroing bytes it
    /// grows into; false (the helper's -EINVAL) outside the buffer or below an
    /// Ethernet header.
    pub fn adjust_tail(&mut self, delta: i64) -> bool {
        let buf_len = self.regions[PACKET as usize - 1].data.len();
        let end = self.data_end as i64 + delta;
        if end > buf_len as i64 || end < (self.data + ETH_HLEN) as i64 {
            return false;
        }
        let end = end as usize;
        if end > self.data_end {
            self.regions[PACKET as usize - 1].data[self.data_end..end].fill(0);
        }
        self.data_end = end;
        true
    }

    /// The frame between `data` and `data_end`.
    pub fn packet(&self) -> Vec<u8> {
        self.regions[PACKET as usize - 1].data[self.data..self.data_end].to_vec()
    }
}
