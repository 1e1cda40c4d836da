//! Random (`pick = "random"`): a backend drawn with probability in
//! proportion to its weight, independently for each request.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{Member, Selector, bounded_hash::mix};

/// Weighted random choice.
#[derive(Debug, Default)]
pub struct Random;

/// Seeds each thread's stream apart from the others'.
static SEEDS: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);

thread_local! {
    static STATE: Cell<u64> = Cell::new(SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
}

/// The next value of this thread's splitmix64 stream.
fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        mix(x)
    })
}

impl Selector for Random {
    fn select<'a>(&self, _key: u64, members: &'a [Member]) -> Option<&'a Member> {
        let total: u64 = members.iter().map(|m| m.weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut r = next() % total;
        members.iter().find(|m| {
            if r < m.weight as u64 {
                true
            } else {
                r -= m.weight as u64;
                false
            }
        })
    }
}
