//! Types of the benchmark fixture programs (`bench` object), not used in
//! production.

use bytemuck::{Pod, Zeroable};

/// Bytes of the original packet the wrapper restores before each repeat.
pub const BENCH_HEAD_LEN: usize = 64;

/// Value of the bench wrapper's `BENCH_CFG[0]`.
///
/// `BPF_PROG_TEST_RUN` feeds one buffer to every repeat, so a program that
/// rewrites or encapsulates sees its own output on the next repeat. The wrapper
/// puts the original length and first [`BENCH_HEAD_LEN`] bytes back, optionally
/// makes the packet a new connection, then tail-calls the program under test.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchConfig {
    /// Length of the original packet.
    pub orig_len: u32,
    /// Non-zero: write a per-CPU counter into the packet before each repeat so
    /// that every repeat is a new connection: its low 16 bits at `sport_off`,
    /// its high 16 bits at `src_lo_off` (the last two bytes of the source address).
    pub rotate: u32,
    /// Offset of the source port.
    pub sport_off: u32,
    /// Offset of the last two bytes of the source address.
    pub src_lo_off: u32,
    /// Non-zero: the program under test cuts the packet's tail (a RST
    /// reply), so its length is restored there rather than at the head.
    pub tail: u32,
    /// The original packet's first bytes.
    pub head: [u8; BENCH_HEAD_LEN],
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self::zeroed()
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], no padding, bytemuck::Pod.
unsafe impl aya::Pod for BenchConfig {}
