//! The connection table: a set-associative cache of 64-byte sets with LRU
//! replacement inside each set (see `balancer_common::FlowBucket`).
//!
//! Why not a kernel LRU hash map: on the gateways we measured, one
//! `bpf_map_update_elem` into an LRU hash costs 230-490 ns (more as the table
//! grows), several times the whole rest of the new-connection path. Here a
//! lookup is one inlined array access and one cache line; an insert writes
//! one `u64` and one `u16` into that same line. `cargo xtask bench dataplane`
//! prints both side by side.
//!
//! Concurrency: entries are single aligned `u64` words, so readers never see a
//! torn entry. Two CPUs inserting into the same set at the same instant may
//! pick the same victim; one entry is then lost and that connection is placed
//! again through the ring on its next packet (same backend unless the ring
//! changed in between), exactly as after an eviction.

use balancer_common::{FLOW_WAYS, FlowBucket, flow_entry_tag};

/// Result of looking up a tag in a set.
pub enum Found {
    /// The entry at `way` carries the tag.
    Hit {
        /// Way index.
        way: usize,
        /// The entry.
        entry: u64,
    },
    /// No entry carries the tag; `victim` is the way to overwrite (empty, or
    /// least recently used).
    Miss {
        /// Way to insert into.
        victim: usize,
    },
}

/// Looks `tag` up in `set`, refreshing the hit entry's stamp to `now`.
#[inline(always)]
pub fn lookup(set: &mut FlowBucket, tag: u32, now: u16) -> Found {
    let mut victim = 0usize;
    let mut victim_age = 0u16;
    let mut have_empty = false;
    for way in 0..FLOW_WAYS {
        let entry = set.entries[way];
        if entry != 0 && flow_entry_tag(entry) == tag {
            // Write only when the stamp changes, so a busy flow doesn't dirty
            // the line on every packet.
            if set.stamps[way] != now {
                set.stamps[way] = now;
            }
            return Found::Hit { way, entry };
        }
        if have_empty {
            continue;
        }
        if entry == 0 {
            have_empty = true;
            victim = way;
        } else {
            let age = now.wrapping_sub(set.stamps[way]);
            if age >= victim_age {
                victim_age = age;
                victim = way;
            }
        }
    }
    Found::Miss { victim }
}

/// Writes `entry` into `way` of `set`, stamped `now`.
#[inline(always)]
pub fn store(set: &mut FlowBucket, way: usize, entry: u64, now: u16) {
    if let Some(e) = set.entries.get_mut(way) {
        *e = entry;
    }
    if let Some(s) = set.stamps.get_mut(way) {
        *s = now;
    }
}

/// The coarse clock of the stamps: `jiffies >> 4` (16 ms at HZ=1000, 64 ms at
/// HZ=250), wrapping every ~17 minutes at HZ=1000.
#[inline(always)]
pub fn now() -> u16 {
    // SAFETY: helper without arguments.
    (unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() } >> 4) as u16
}
