//! The cache's event counters, defined once: the [`Counter`] list below
//! makes the atomics ([`Counters`]), the snapshot's fields ([`CacheStats`],
//! the API's JSON) and what metrics and the CLI iterate over.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

/// Writes [`Counter`], its list, and the snapshot struct whose first fields
/// are the counters (named as the API's JSON names them), followed by the
/// fields given after the `;`.
macro_rules! counters {
    (
        $( $(#[doc = $doc:literal])* $variant:ident => $field:ident, )*
        ;
        $(#[doc = $sdoc:literal])*
        pub struct $stats:ident {
            $( $(#[$xmeta:meta])* pub $xfield:ident: $xty:ty, )*
        }
    ) => {
        /// One of the cache's event counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Counter {
            /// Every counter, in the order of the snapshot's fields.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The snapshot's (and the API's JSON) field name.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => stringify!($field),)* }
            }
        }

        $(#[doc = $sdoc])*
        // Fields a peer does not send read as 0: a newer CLI can talk to an
        // older daemon.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $stats {
            $( $(#[doc = $doc])* pub $field: u64, )*
            $( $(#[$xmeta])* pub $xfield: $xty, )*
        }

        impl $stats {
            /// One counter's value.
            pub fn count(&self, c: Counter) -> u64 {
                match c { $(Counter::$variant => self.$field,)* }
            }

            /// One counter's field.
            pub fn count_mut(&mut self, c: Counter) -> &mut u64 {
                match c { $(Counter::$variant => &mut self.$field,)* }
            }
        }
    };
}

counters! {
    /// L1 hits: requests served from this process.
    Hits => hits,
    /// L2 hits: requests served from Redis.
    HitsL2 => hits_l2,
    /// Misses: cacheable requests that went to a backend.
    Misses => misses,
    /// Misses that waited on an identical request in flight instead.
    Coalesced => coalesced,
    /// Requests forwarded without the cache.
    Bypasses => bypasses,
    /// Requests refused with 413.
    TooLarge => too_large,
    /// Responses not cached: non-2xx, `no-store`, private, with a cookie,
    /// encoded, a stream of events, or over the object size.
    Uncacheable => uncacheable,
    /// Backends that failed or timed out (502/503/504 to the client).
    BackendErrors => backend_errors,
    /// Entries stored in L1.
    Stored => stored,
    /// Entries the admission policy turned away.
    Rejected => rejected,
    /// Entries evicted for room.
    Evictions => evictions,
    /// Entries removed by invalidations (local and from the bus).
    Invalidated => invalidated,
    /// Body bytes served from the cache.
    BytesServed => bytes_served,
    /// Body bytes stored.
    BytesStored => bytes_stored,
    /// Times a backend was marked down by passive health (failures in a
    /// row).
    MarkedDown => marked_down,
    ;
    /// A snapshot of the cache for the API and metrics.
    pub struct CacheStats {
        /// GPU (backend) seconds saved by hits.
        pub gpu_seconds_saved: f64,
        /// Entries in L1.
        pub entries: u64,
        /// Bytes charged in L1.
        pub bytes: u64,
        /// L1 budget.
        pub budget: u64,
        /// The L2, if configured.
        pub l2: Option<L2Stats>,
        /// Current version of each model seen or configured.
        pub versions: BTreeMap<String, String>,
    }
}

/// The L2's state in [`CacheStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L2Stats {
    /// The URL.
    pub url: String,
    /// Whether it is connected.
    pub up: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Failed commands.
    pub errors: u64,
    /// Invalidations waiting for Redis to come back.
    pub pending: u64,
}

/// The live counters: one atomic per [`Counter`], and the backend time
/// saved.
#[derive(Debug)]
pub struct Counters {
    counts: [AtomicU64; Counter::ALL.len()],
    /// Microseconds; kept apart from the event counts because the snapshot
    /// shows it as seconds ([`CacheStats::gpu_seconds_saved`]).
    saved_us: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            saved_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(&self, c: Counter, n: u64) {
        self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn bump(&self, c: Counter) {
        self.add(c, 1);
    }

    /// A counter's value.
    pub fn get(&self, c: Counter) -> u64 {
        self.counts[c as usize].load(Ordering::Relaxed)
    }

    /// Counts backend time a hit saved.
    pub fn add_saved(&self, seconds: f64) {
        self.saved_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Backend time saved so far, seconds.
    pub fn saved_seconds(&self) -> f64 {
        self.saved_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Copies every counter into a snapshot.
    pub fn fill(&self, s: &mut CacheStats) {
        for &c in Counter::ALL {
            *s.count_mut(c) = self.get(c);
        }
        s.gpu_seconds_saved = self.saved_seconds();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense_and_named_as_fields() {
        let c = Counters::default();
        let mut s = CacheStats::default();
        for (i, &k) in Counter::ALL.iter().enumerate() {
            assert_eq!(k as usize, i);
            c.add(k, i as u64 + 1);
        }
        c.fill(&mut s);
        let json = serde_json::to_value(&s).unwrap();
        for (i, &k) in Counter::ALL.iter().enumerate() {
            assert_eq!(s.count(k), i as u64 + 1);
            assert_eq!(json[k.name()], i as u64 + 1, "{}", k.name());
        }
    }
}
