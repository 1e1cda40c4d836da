//! Code shared by the balancer's XDP programs (`src/bin/*.rs`).
//!
//! - [`net`]: wire-format headers and protocol constants;
//! - [`packet`]: bounds-checked packet access (the `ptr_at` pattern) and
//!   header growth/shrink helpers;
//! - [`l2`]: keeping Ethernet/VLAN across a move of the packet head;
//! - [`csum`]: Internet checksums;
//! - [`flowtable`]: the set-associative connection table.
//!
//! Minimum kernel: 5.10 (bounded loops, `bpf_xdp_adjust_tail` shrink, XDP bpf_link,
//! mmapable arrays). Tested on 6.1 and 6.18.
#![no_std]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod csum;
pub mod flowtable;
pub mod l2;
pub mod net;
pub mod packet;
