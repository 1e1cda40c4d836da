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
//! replays the queue and adopts the fleet's version tokens.

pub mod key;
pub mod l2;
pub mod pick;
pub mod policy;
pub mod proxy;
pub mod stats;
pub mod store;

pub use stats::{CacheStats, Counter, Counters, L2Stats};

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use self::{
    key::Key,
    l2::{BusMessage, L2, RedisSettings},
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

/// What to invalidate. Every operation names a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Invalidation {
    /// Every entry of a model.
    Model {
        /// The model.
        model: String,
    },
    /// One entry, by its key (the `x-cache-key` header).
    Key {
        /// The model.
        model: String,
        /// 64 hex digits.
        key: String,
    },
    /// Entries whose prompt text starts with `prefix`.
    Prefix {
        /// The model.
        model: String,
        /// The prompt prefix.
        prefix: String,
    },
    /// A new version token: all older entries become unreachable.
    Bump {
        /// The model.
        model: String,
        /// The new token.
        token: String,
    },
}

impl Invalidation {
    /// The model it concerns.
    pub fn model(&self) -> &str {
        match self {
            Self::Model { model }
            | Self::Key { model, .. }
            | Self::Prefix { model, .. }
            | Self::Bump { model, .. } => model,
        }
    }
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            shards: 16,
            redis: None,
            versions: BTreeMap::new(),
        }
    }
}

/// What an invalidation did here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidateReply {
    /// Entries removed from this gateway's L1.
    pub l1_removed: u64,
    /// Entries removed from Redis.
    pub l2_removed: u64,
    /// Whether the other gateways were told now; otherwise it is queued
    /// until Redis is back.
    pub broadcast: bool,
    /// The model's version afterwards.
    pub version: String,
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

/// A fresh, unpredictable version token.
fn new_token() -> String {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
    format!("{h:016x}")
}

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
            store: Store::new(settings.memory_bytes, settings.shards),
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

    /// Applies an invalidation to L1 only; returns the entries removed.
    fn apply_local(&self, op: &Invalidation) -> u64 {
        let n = match op {
            Invalidation::Model { model } => self.store.remove_where(|e| &e.model == model),
            Invalidation::Key { key, .. } => {
                Key::parse(key).is_some_and(|k| self.store.remove(&k)) as u64
            }
            Invalidation::Prefix { model, prefix } => self
                .store
                .remove_where(|e| &e.model == model && e.prompt.starts_with(prefix.as_str())),
            Invalidation::Bump { model, token } => {
                self.tokens
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(model.clone(), token.clone());
                // Old entries are already unreachable; free their memory.
                let current = self.version(model);
                self.store
                    .remove_where(|e| &e.model == model && e.version != current)
            }
        };
        self.counters.add(Counter::Invalidated, n);
        n
    }

    /// Invalidates here, in Redis, and on every other gateway.
    pub async fn invalidate(&self, op: Invalidation) -> Result<InvalidateReply, CacheError> {
        if let Invalidation::Key { key, .. } = &op
            && Key::parse(key).is_none()
        {
            return Err(CacheError::BadKey(key.clone()));
        }
        let l1_removed = self.apply_local(&op);
        let mut reply = InvalidateReply {
            l1_removed,
            l2_removed: 0,
            broadcast: self.l2.is_none(),
            version: self.version(op.model()),
        };
        let Some(l2) = &self.l2 else {
            return Ok(reply);
        };
        let sent = async {
            let n = l2.delete(&op, false).await?;
            l2.publish(
                &BusMessage {
                    from: self.id.clone(),
                    op: op.clone(),
                },
                false,
            )
            .await?;
            Ok::<_, CacheError>(n)
        }
        .await;
        match sent {
            Ok(n) => {
                reply.l2_removed = n;
                reply.broadcast = true;
            }
            Err(e) => {
                warn!(error = %e, ?op, "Redis unreachable: invalidation queued until it is back");
                self.outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(op);
            }
        }
        Ok(reply)
    }

    /// Replaces `model`'s version token everywhere.
    pub async fn bump_version(&self, model: &str) -> Result<InvalidateReply, CacheError> {
        self.invalidate(Invalidation::Bump {
            model: model.to_string(),
            token: new_token(),
        })
        .await
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

    /// Resynchronises after a (re)connect: flush L1, replay our queued
    /// invalidations, adopt the fleet's version tokens.
    async fn resync(&self, l2: &L2) -> Result<(), CacheError> {
        let flushed = self.store.clear();
        let pending = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, op) in pending.iter().enumerate() {
            let r = async {
                l2.delete(op, true).await?;
                l2.publish(
                    &BusMessage {
                        from: self.id.clone(),
                        op: op.clone(),
                    },
                    true,
                )
                .await
            }
            .await;
            if let Err(e) = r {
                let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
                let rest: Vec<Invalidation> = pending[i..].to_vec();
                out.splice(0..0, rest);
                return Err(e);
            }
        }
        let fleet = l2.versions().await?;
        {
            let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
            for (m, t) in fleet {
                tokens.insert(m, t);
            }
        }
        info!(
            flushed,
            replayed = pending.len(),
            "connected to Redis: L1 flushed, invalidations replayed"
        );
        Ok(())
    }

    /// Keeps the L2 connected and applies the bus's messages; runs forever.
    /// Does nothing without an L2.
    pub async fn run_l2(self: Arc<Self>) {
        let Some(l2) = self.l2.clone() else { return };
        let mut backoff = Duration::from_millis(100);
        let mut logged_down = false;
        loop {
            match l2.connect().await {
                Ok(ps) => {
                    if let Err(e) = self.resync(&l2).await {
                        warn!(error = %e, "Redis resync failed");
                    } else {
                        backoff = Duration::from_millis(100);
                        logged_down = false;
                        l2.set_up(true);
                        let mut msgs = ps.into_on_message();
                        let mut ping = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            tokio::select! {
                                m = msgs.next() => {
                                    let Some(m) = m else { break };
                                    let Ok(payload) = m.get_payload::<String>() else { continue };
                                    match serde_json::from_str::<BusMessage>(&payload) {
                                        Ok(msg) if msg.from != self.id => {
                                            let n = self.apply_local(&msg.op);
                                            debug!(op = ?msg.op, removed = n, "invalidation from the bus");
                                        }
                                        Ok(_) => {}
                                        Err(e) => warn!(error = %e, "malformed message on the invalidation bus"),
                                    }
                                }
                                _ = ping.tick() => {
                                    if l2.ping().await.is_err() { break }
                                }
                                _ = l2.broken.notified() => {
                                    if !l2.is_up() { break }
                                }
                            }
                        }
                        warn!("lost Redis: serving from L1 only until it is back");
                    }
                    l2.disconnect().await;
                }
                Err(e) => {
                    if !logged_down {
                        warn!(error = %e, "Redis unreachable: serving from L1 only, retrying");
                        logged_down = true;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn entry(model: &str, version: String) -> Arc<Entry> {
        Arc::new(Entry {
            status: 200,
            content_type: None,
            body: bytes::Bytes::from_static(b"{}"),
            created_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            cost_s: 0.2,
            model: model.into(),
            version,
            prompt: "hello world".into(),
        })
    }

    #[tokio::test]
    async fn versions_and_invalidation_without_l2() {
        let mut s = Settings::default();
        s.versions.insert("m".into(), "v1".into());
        let c = Cache::new(s).unwrap();
        assert_eq!(c.version("m"), "v1");
        assert_eq!(c.version("other"), "");
        let k1 = key::key("r", "/", "m", &c.version("m"), b"1");
        c.fill(k1, entry("m", c.version("m")));
        assert!(c.lookup("m", &k1).await.is_some());
        let r = c.bump_version("m").await.unwrap();
        assert!(r.version.starts_with("v1+"), "{}", r.version);
        assert_eq!(r.l1_removed, 1, "old-version entries purged");
        let k2 = key::key("r", "/", "m", &c.version("m"), b"1");
        assert_ne!(k1, k2);
        c.fill(k2, entry("m", c.version("m")));
        let r = c
            .invalidate(Invalidation::Prefix {
                model: "m".into(),
                prefix: "hello".into(),
            })
            .await
            .unwrap();
        assert_eq!(r.l1_removed, 1);
        let bad = c.invalidate(Invalidation::Key {
            model: "m".into(),
            key: "nope".into(),
        });
        assert!(matches!(bad.await, Err(CacheError::BadKey(_))));
        let s = c.stats();
        assert_eq!((s.stored, s.invalidated, s.entries), (2, 2, 0));
    }

    /// A snapshot whose every number differs, for tests that pin formats.
    pub(crate) fn sample_stats() -> CacheStats {
        CacheStats {
            hits: 1,
            hits_l2: 2,
            misses: 3,
            coalesced: 4,
            bypasses: 5,
            too_large: 6,
            uncacheable: 7,
            backend_errors: 8,
            stored: 9,
            rejected: 10,
            evictions: 11,
            invalidated: 12,
            bytes_served: 13_000,
            bytes_stored: 14_000,
            gpu_seconds_saved: 1.5,
            entries: 15,
            bytes: 16_000,
            budget: 17_000,
            l2: Some(L2Stats {
                url: "redis://127.0.0.1:6379".into(),
                up: true,
                connects: 18,
                errors: 19,
                pending: 20,
            }),
            versions: BTreeMap::from([("m".to_string(), "v1+abc".to_string())]),
        }
    }

    #[test]
    fn stats_json_is_stable() {
        // The API's wire format: field names and order are what clients and
        // docs read.
        let s = sample_stats();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"hits":1,"hits_l2":2,"misses":3,"coalesced":4,"bypasses":5,"too_large":6,"#,
                r#""uncacheable":7,"backend_errors":8,"stored":9,"rejected":10,"evictions":11,"invalidated":12,"#,
                r#""bytes_served":13000,"bytes_stored":14000,"gpu_seconds_saved":1.5,"#,
                r#""entries":15,"bytes":16000,"budget":17000,"#,
                r#""l2":{"url":"redis://127.0.0.1:6379","up":true,"connects":18,"errors":19,"pending":20},"versions":{"m":"v1+abc"}}"#,
            )
        );
        assert_eq!(serde_json::from_str::<CacheStats>(&json).unwrap(), s);
    }
}
