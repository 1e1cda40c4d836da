//! The eBPF objects, compiled by `build.rs` and embedded in the binary so a
//! gateway needs nothing but `balancer` itself.

/// The `balancer` XDP program and its maps.
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The backend-side `decap` XDP program.
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));

/// Benchmark fixtures (`bench_pass`, `bench_macswap`, `bench_wrapper`, LRU probes).
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
