//! A small eBPF interpreter that counts the instructions a program executes.
//!
//! Wall-clock time per packet depends on the CPU, its frequency and whatever
//! else the machine runs; the number of eBPF instructions a path executes does
//! not, so `cargo xtask bench dataplane` can print both. This module runs the real
//! XDP objects (`balancer::dataplane::objects`) on one frame at a time and
//! reports the action, the packet as it leaves, the helpers called and the
//! instruction count.
//!
//! - [`elf`] loads an object: the entry function, every function it can call
//!   (bpf-to-bpf calls), the maps and the global sections, with relocations
//!   resolved;
//! - [`mem`] is the memory model: tagged pointers over the stack frames, the
//!   `xdp_md` context, the packet buffer, the globals and map values;
//! - [`exec`] is the instruction loop (the arithmetic and jump conditions are
//!   in `alu.rs`); [`helpers`] the BPF helpers it knows. [`exec::trace_xdp`]
//!   also lists the instructions a run executed, to see where a count
//!   comes from.
//!
//! Map contents come from a [`MapBackend`] (normally the kernel's maps, read
//! only: [`KernelMaps`]). Every value a run touches is copied once into the run's memory, so
//! writes stay local to the run: the interpreter never changes a kernel map.
//!
//! What the interpreter does not do is verify: it trusts the program as the
//! kernel's verifier accepted it, and only refuses what it cannot execute
//! (an unknown opcode or helper, an access outside every region) with a
//! [`VmError`], never a panic.

use std::collections::BTreeMap;

mod alu;
pub mod elf;
pub mod exec;
pub mod helpers;
pub mod kernel;
pub mod mem;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_objects;
#[cfg(test)]
mod tests_vip;

pub use elf::{MapDef, Program};
pub use kernel::KernelMaps;
pub use mem::Fault;

/// `XDP_ABORTED`.
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// Where map contents come from.
///
/// The caller backs this with the real kernel maps, or with fixtures in tests.
/// It is only read: the interpreter keeps its own copy of every value it
/// touched, so writes made during a run stay local to the run and never reach
/// the backend.
pub trait MapBackend {
    /// The value for `key` in map `map` (for arrays the key is a `u32` index;
    /// for per-CPU maps the value of one CPU), or `None` if there is none.
    ///
    /// For array maps (`BPF_MAP_TYPE_ARRAY`, `BPF_MAP_TYPE_PERCPU_ARRAY`),
    /// `None` for an index below `max_entries` reads as a zeroed value, as a
    /// kernel array is never missing an element.
    fn lookup(&mut self, map: &str, key: &[u8]) -> Option<Vec<u8>>;
}

/// A [`MapBackend`] with no entries: every hash lookup misses and every array
/// element reads as zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyMaps;

impl MapBackend for EmptyMaps {
    fn lookup(&mut self, _map: &str, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl<F: FnMut(&str, &[u8]) -> Option<Vec<u8>>> MapBackend for F {
    fn lookup(&mut self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        self(map, key)
    }
}

/// The outcome of running a program on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The entry function's return value (an XDP action for XDP programs).
    pub action: u32,
    /// eBPF instructions executed, in all frames (an `ld_imm64` counts once).
    pub insns: u64,
    /// Calls per helper id.
    pub helper_calls: BTreeMap<u32, u64>,
    /// The frame between `data` and `data_end` at exit.
    pub packet: Vec<u8>,
}

/// Where in the object an instruction is: its section and its index there, as
/// `llvm-objdump -d` numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The section's name, e.g. `xdp` or `.text`.
    pub section: String,
    /// The instruction's index in the section (8-byte slots).
    pub index: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.section, self.index)
    }
}

/// Why an object could not be loaded or a program could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The object is not a little-endian 64-bit BPF ELF file we can read.
    #[error("reading the ELF object: {0}")]
    Elf(#[from] object::Error),
    /// The object is readable but not as a BPF program expects.
    #[error("malformed BPF object: {0}")]
    Malformed(String),
    /// No function of that name in an executable section.
    #[error("no function {0:?} in the object")]
    NoEntry(String),
    /// A relocation the loader does not handle.
    #[error("relocation at {at} (type {r_type}, symbol {symbol:?}): {reason}")]
    Relocation {
        /// The relocated instruction.
        at: Location,
        /// The ELF relocation type.
        r_type: u32,
        /// The symbol it refers to.
        symbol: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No global of that name in `.rodata`, `.data` or `.bss`.
    #[error("no global {0:?} in the object")]
    NoGlobal(String),
    /// [`Program::set_global`] was given the wrong number of bytes.
    #[error("global {symbol:?} is {expected} bytes, got {got}")]
    GlobalSize {
        /// The global.
        symbol: String,
        /// Its size in the object.
        expected: usize,
        /// The number of bytes given.
        got: usize,
    },
    /// No map of that name in the object.
    #[error("no map {0:?} in the object")]
    NoMap(String),
    /// The backend returned a value of the wrong size.
    #[error("map {map:?}: the backend returned {got} bytes, the value is {expected}")]
    ValueSize {
        /// The map.
        map: String,
        /// The map's value size.
        expected: usize,
        /// The size returned.
        got: usize,
    },
    /// An opcode the interpreter does not know (or an invalid encoding).
    #[error("unknown opcode {opcode:#04x} at {at}")]
    UnknownOpcode {
        /// The instruction.
        at: Location,
        /// Its opcode byte.
        opcode: u8,
    },
    /// A register number above 10, or a write to the frame pointer r10.
    #[error("bad register r{reg} at {at}")]
    BadRegister {
        /// The instruction.
        at: Location,
        /// The register number.
        reg: u8,
    },
    /// A helper the interpreter does not implement.
    #[error("unsupported helper {id} called at {at}")]
    UnknownHelper {
        /// The call instruction.
        at: Location,
        /// The helper id.
        id: u32,
    },
    /// A helper was given a map argument that is not a map.
    #[error("helper {helper} at {at}: {value:#x} is not a map")]
    NotAMap {
        /// The call instruction.
        at: Location,
        /// The helper id.
        helper: u32,
        /// The register value passed.
        value: u64,
    },
    /// A load or store outside the memory the program may touch.
    #[error("{} of {size} bytes at {addr:#x} at {at}: {fault}", if *.write { "store" } else { "load" })]
    Access {
        /// The instruction (or helper call) that made the access.
        at: Location,
        /// The tagged address.
        addr: u64,
        /// The access size in bytes.
        size: usize,
        /// A store (or read-modify-write) rather than a load.
        write: bool,
        /// What is wrong with it.
        fault: Fault,
    },
    /// The program counter left the program (a jump or fall-through past the end).
    #[error("jump out of the program from {from} to instruction {target}")]
    PcOutOfRange {
        /// The last instruction executed.
        from: Location,
        /// The absolute instruction index it went to.
        target: i64,
    },
    /// More nested bpf-to-bpf calls than the kernel allows (8 frames).
    #[error("call depth exceeded at {at}")]
    CallDepth {
        /// The call instruction.
        at: Location,
    },
    /// Reading the kernel's maps ([`KernelMaps`]) failed.
    #[error("kernel maps: {0}")]
    Kernel(String),
    /// The run executed more instructions than its limit.
    #[error("instruction limit of {0} exceeded")]
    InsnLimit(u64),
}
