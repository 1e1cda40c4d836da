//! The in-process L1: entries sharded by key, each shard a mutex over a map
//! and its [`Policy`]. Lookups on different shards never contend, and each
//! operation holds one shard's lock for O(log n) work.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;

use super::{key::Key, policy::Policy};

/// Bytes charged per entry on top of its body and prompt (map slots, headers).
pub const ENTRY_OVERHEAD: u64 = 256;

/// A cached response.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// HTTP status (always 2xx: nothing else is cached).
    pub status: u16,
    /// The backend's `content-type`.
    pub content_type: Option<String>,
    /// The response body.
    pub body: Bytes,
    /// When it was fetched, Unix milliseconds.
    pub created_ms: u64,
    /// When it expires, Unix milliseconds.
    pub expires_ms: u64,
    /// What the miss cost: the backend's response time, seconds.
    pub cost_s: f64,
    /// The request's model.
    pub model: String,
    /// The model version the key was made with.
    pub version: String,
    /// The prompt text, for prefix invalidation.
    pub prompt: String,
}

impl Entry {
    /// Bytes the entry is charged in the budget.
    pub fn charge(&self) -> u64 {
        self.body.len() as u64 + self.prompt.len() as u64 + self.model.len() as u64 + ENTRY_OVERHEAD
    }
}

struct Shard {
    policy: Policy<Key>,
    map: HashMap<Key, Arc<Entry>>,
}

/// The sharded store.
pub struct Store {
    shards: Vec<Mutex<Shard>>,
    /// How long expired entries are kept for stale answers.
    stale_ms: u64,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Whether the entry is now held (the policy may turn it away).
    pub admitted: bool,
    /// Entries evicted to make room.
    pub evicted: u64,
}

impl Store {
    /// A store of `budget` bytes in `shards` shards.
    pub fn new(budget: u64, shards: usize) -> Self {
        let shards = shards.clamp(1, 1024);
        let per = (budget / shards as u64).max(1);
        // Sized for ~4 KiB entries; the sketch only needs the order of magnitude.
        let expected = ((per / 4096) as usize).clamp(64, 1 << 20);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        policy: Policy::new(per, expected),
                        map: HashMap::new(),
                    })
                })
                .collect(),
            stale_ms: 0,
        }
    }

    /// Keeps expired entries `ms` longer, for stale answers ([`Self::peek`]).
    pub fn keep_stale(mut self, ms: u64) -> Self {
        self.stale_ms = ms;
        self
    }

    /// `k`'s entry, fresh or expired but still kept, without counting an
    /// access.
    pub fn peek(&self, k: &Key) -> Option<Arc<Entry>> {
        self.shard(k).map.get(k).cloned()
    }

    fn shard(&self, k: &Key) -> MutexGuard<'_, Shard> {
        let i = (k.short() >> 32) as usize % self.shards.len();
        // A panic while holding a shard cannot leave it inconsistent in a way
        // that matters more than losing the cache: recover the guard.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `k` up at time `now_ms`, counting the access. Expired entries
    /// are dropped on the way, once past the stale window.
    pub fn get(&self, k: &Key, now_ms: u64) -> Option<Arc<Entry>> {
        let mut s = self.shard(k);
        s.policy.touch(k);
        let e = s.map.get(k)?.clone();
        if e.expires_ms <= now_ms {
            if e.expires_ms.saturating_add(self.stale_ms) <= now_ms {
                s.map.remove(k);
                s.policy.remove(k);
            }
            return None;
        }
        Some(e)
    }

    /// Offers an entry; the policy decides.
    pub fn insert(&self, k: Key, e: Arc<Entry>) -> Inserted {
        let mut s = self.shard(&k);
        let a = s.policy.insert(k, e.charge(), e.cost_s);
        for v in &a.evicted {
            s.map.remove(v);
        }
        if a.admitted {
            s.map.insert(k, e);
        } else {
            s.map.remove(&k);
        }
        Inserted {
            admitted: a.admitted,
            evicted: a.evicted.iter().filter(|v| **v != k).count() as u64,
        }
    }

    /// Drops `k`; returns whether it was held.
    pub fn remove(&self, k: &Key) -> bool {
        let mut s = self.shard(k);
        s.policy.remove(k);
        s.map.remove(k).is_some()
    }

    /// Drops every entry `drop` says so of; returns how many. Takes one
    /// shard's lock at a time.
    pub fn remove_where(&self, drop: impl Fn(&Entry) -> bool) -> u64 {
        let mut n = 0;
        for sh in &self.shards {
            let mut s = sh.lock().unwrap_or_else(|e| e.into_inner());
            let doomed: Vec<Key> = s
                .map
                .iter()
                .filter(|(_, e)| drop(e))
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                s.map.remove(&k);
                s.policy.remove(&k);
                n += 1;
            }
        }
        n
    }

    /// Drops everything; returns how many entries there were.
    pub fn clear(&self) -> u64 {
        self.remove_where(|_| true)
    }

    /// (entries, bytes charged).
    pub fn usage(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(n, b), sh| {
            let s = sh.lock().unwrap_or_else(|e| e.into_inner());
            (n + s.map.len() as u64, b + s.policy.used())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, prompt: &str, body: usize, expires_ms: u64) -> Arc<Entry> {
        Arc::new(Entry {
            status: 200,
            content_type: None,
            body: Bytes::from(vec![b'x'; body]),
            created_ms: 0,
            expires_ms,
            cost_s: 0.1,
            model: model.into(),
            version: String::new(),
            prompt: prompt.into(),
        })
    }

    fn key(i: u8) -> Key {
        Key([i; 32])
    }

    #[test]
    fn ttl_removal_and_budget() {
        let s = Store::new(1 << 20, 4);
        assert!(s.insert(key(1), entry("m", "a", 10, 100)).admitted);
        assert!(s.get(&key(1), 50).is_some());
        assert!(s.get(&key(1), 100).is_none(), "expired at its deadline");
        assert_eq!(s.usage().0, 0);
        s.insert(key(2), entry("m", "abc", 10, u64::MAX));
        s.insert(key(3), entry("m", "xyz", 10, u64::MAX));
        s.insert(key(4), entry("other", "abc", 10, u64::MAX));
        assert_eq!(
            s.remove_where(|e| e.model == "m" && e.prompt.starts_with("ab")),
            1
        );
        assert!(s.remove(&key(3)));
        assert_eq!(s.usage().0, 1);
        assert_eq!(s.clear(), 1);
        // Too big for a shard: turned away, never half-held.
        let small = Store::new(1000, 1);
        assert!(
            !small
                .insert(key(5), entry("m", "", 5000, u64::MAX))
                .admitted
        );
        assert_eq!(small.usage(), (0, 0));
    }
}
