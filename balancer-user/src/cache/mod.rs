//! The inference result cache: an L1 in this process, an optional L2 in
//! Redis shared by the fleet's gateways, and the invalidation bus.
//!
//! - [`key`]: which requests are cacheable and what their key is;
//! - [`policy`]: eviction and admission (cost-, size- and frequency-aware);
//! - [`store`]: the sharded L1 that applies the policy;
//! - [`l2`]: Redis entries, version tokens and the pub/sub bus;
//! - [`pick`]: the backend for a miss (consistent hashing, bounded loads);
//! - [`proxy`]: the HTTP listeners that put it all together;
//! - [`stats`]: the event counters, defined once, and the snapshot.
//!
//! **Coherency.** A key includes the model's version, which is the
//! configured version plus a token that `bump-version` replaces: old entries
//! become unreachable at once and are purged in the background. Targeted
//! invalidations delete from L1 and L2, then go out on the bus. A gateway
//! that loses Redis keeps serving from L1, queues its own invalidations, and
//! on reconnecting flushes its L1 (broadcasts sent meanwhile are lost),
//! replays the queue and adopts the fleet's version tokens. All of this is
//! in `coherency.rs`.

mod coherency;
pub mod key;
pub mod l2;
pub mod pick;
pub mod policy;
pub mod proxy;
pub mod stats;
pub mod store;

pub use coherency::{InvalidateReply, Invalidation};
pub use stats::{CacheStats, Counter, Counters, L2Stats};

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::Duration,
};

use tracing::debug;

use self::{
    coherency::new_token,
    key::Key,
    l2::{L2, RedisSettings},
    store::{Entry, Store},
};

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A Redis command or connection failed.
    #[error("redis: {context}: {message}")]
    Redis {
        /// What was being done.
        context: String,
        /// Redis's or the client's message.
        message: String,
    },
    /// The L2 is configured but not connected.
    #[error("the L2 (Redis) is not connected")]
    L2Down,
    /// A key that is not 64 hex digits.
    #[error("{0:?} is not a cache key (64 hex digits, as in the x-cache-key header)")]
    BadKey(String),
    /// A listener could not be bound.
    #[error("binding cache route {route} on {addr}: {message}")]
    Bind {
        /// The route.
        route: String,
        /// Its address.
        addr: std::net::SocketAddr,
        /// The OS error.
        message: String,
    },
}

/// Cache-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// L1 memory budget, bytes.
    pub memory_bytes: u64,
    /// L1 shards (lock striping).
    pub shards: usize,
    /// The L2, when configured.
    pub redis: Option<RedisSettings>,
    /// Configured model versions (models not listed have version "").
    pub versions: BTreeMap<String, String>,
    /// How long L1 keeps an entry past its expiry, for stale answers (the
    /// longest `stale_secs` of the routes).
    pub stale_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            shards: 16,
            redis: None,
            versions: BTreeMap::new(),
            stale_ms: 0,
        }
    }
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// This process.
    L1,
    /// Redis.
    L2,
}

pub use crate::clock::now_ms;

/// The cache shared by all routes of a daemon.
pub struct Cache {
    settings: Settings,
    store: Store,
    /// Model → version token (the configured version is prepended).
    tokens: RwLock<HashMap<String, String>>,
    /// Event counters.
    pub counters: Counters,
    l2: Option<Arc<L2>>,
    id: String,
    outbox: Mutex<Vec<Invalidation>>,
}

impl Cache {
    /// A cache; with an L2, call [`run_l2`](Self::run_l2) to connect it.
    pub fn new(settings: Settings) -> Result<Arc<Self>, CacheError> {
        let l2 = match &settings.redis {
            Some(r) => Some(Arc::new(L2::new(r.clone())?)),
            None => None,
        };
        Ok(Arc::new(Self {
            store: Store::new(settings.memory_bytes, settings.shards).keep_stale(settings.stale_ms),
            settings,
            tokens: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            l2,
            id: new_token(),
            outbox: Mutex::new(Vec::new()),
        }))
    }

    /// The version string that goes into `model`'s keys.
    pub fn version(&self, model: &str) -> String {
        let base = self
            .settings
            .versions
            .get(model)
            .map(String::as_str)
            .unwrap_or("");
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        match tokens.get(model) {
            Some(t) => format!("{base}+{t}"),
            None => base.to_string(),
        }
    }

    /// Looks a key up in L1, then L2. An L2 hit is copied into L1.
    pub async fn lookup(&self, model: &str, k: &Key) -> Option<(Arc<Entry>, Level)> {
        let now = now_ms();
        if let Some(e) = self.store.get(k, now) {
            return Some((e, Level::L1));
        }
        let l2 = self.l2.as_ref().filter(|l| l.is_up())?;
        match l2.get(model, k).await {
            Ok(Some(e)) if e.expires_ms > now && e.version == self.version(model) => {
                let e = Arc::new(e);
                self.admit(*k, e.clone());
                Some((e, Level::L2))
            }
            Ok(_) => None,
            Err(e) => {
                debug!(error = %e, "L2 read failed; L1 only until Redis is back");
                None
            }
        }
    }

    /// An L1 entry for `k` expired at most `max_stale_ms` ago (or still
    /// fresh) whose model version is still current: what a shed request
    /// may be answered with. L2 is not asked (it drops entries at expiry).
    pub fn lookup_stale(&self, model: &str, k: &Key, max_stale_ms: u64) -> Option<Arc<Entry>> {
        let e = self.store.peek(k)?;
        let fresh_enough = now_ms() < e.expires_ms.saturating_add(max_stale_ms);
        (fresh_enough && e.version == self.version(model)).then_some(e)
    }

    fn admit(&self, k: Key, e: Arc<Entry>) -> bool {
        let r = self.store.insert(k, e);
        self.counters.add(Counter::Evictions, r.evicted);
        self.counters.bump(if r.admitted {
            Counter::Stored
        } else {
            Counter::Rejected
        });
        r.admitted
    }

    /// Stores a fresh backend response in L1 and (in the background) L2.
    pub fn fill(&self, k: Key, e: Arc<Entry>) {
        self.counters.add(Counter::BytesStored, e.body.len() as u64);
        self.admit(k, e.clone());
        if let Some(l2) = self.l2.as_ref().filter(|l| l.is_up()) {
            let l2 = l2.clone();
            let ttl = Duration::from_millis(e.expires_ms.saturating_sub(e.created_ms));
            tokio::spawn(async move {
                if let Err(err) = l2.put(&k, &e, ttl).await {
                    debug!(error = %err, "L2 write failed");
                }
            });
        }
    }

    /// Counts a hit and what it saved.
    pub fn count_hit(&self, e: &Entry, level: Level) {
        self.counters.bump(match level {
            Level::L1 => Counter::Hits,
            Level::L2 => Counter::HitsL2,
        });
        self.counters.add(Counter::BytesServed, e.body.len() as u64);
        self.counters.add_saved(e.cost_s);
    }

    /// A snapshot for the API and metrics.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.store.usage();
        let mut versions: BTreeMap<String, String> = self
            .settings
            .versions
            .keys()
            .map(|m| (m.clone(), self.version(m)))
            .collect();
        let models: Vec<String> = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for m in models {
            let v = self.version(&m);
            versions.insert(m, v);
        }
        let mut s = CacheStats {
            entries,
            bytes,
            budget: self.settings.memory_bytes,
            l2: self.l2.as_ref().map(|l| L2Stats {
                url: l.url().to_string(),
                up: l.is_up(),
                connects: l.connects.load(Ordering::Relaxed),
                errors: l.errors.load(Ordering::Relaxed),
                pending: self.outbox.lock().map(|o| o.len() as u64).unwrap_or(0),
            }),
            versions,
            ..CacheStats::default()
        };
        self.counters.fill(&mut s);
        s
    }
}

#[cfg(test)]
pub(crate) mod tests;
