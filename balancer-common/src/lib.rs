//! Types shared by the balancer's XDP programs and its control plane.
//!
//! Every type here is `#[repr(C)]`, free of padding and [`bytemuck::Pod`], so the
//! kernel side and userspace agree on the byte layout of every map key and value.
//! With the `user` feature each type also implements `aya::Pod`.
//!
//! Addresses and ports are kept in **network byte order** exactly as they appear on
//! the wire, so the data path never byte-swaps on the hot path.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod bench;
pub mod hash;
pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::*;
