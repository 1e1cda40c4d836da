//! Coherency: invalidations (here, in Redis and on the bus), version
//! tokens, and the L2's connection loop that resynchronises after an
//! outage.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    Cache, CacheError, Counter,
    key::Key,
    l2::{BusMessage, L2},
};

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

/// A fresh, unpredictable version token.
pub(super) fn new_token() -> String {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
    format!("{h:016x}")
}

impl Cache {
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
        match self.send(l2, &op, false).await {
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

    /// Deletes from Redis and tells the other gateways; returns the entries
    /// Redis removed. `force` as in [`L2::delete`].
    async fn send(&self, l2: &L2, op: &Invalidation, force: bool) -> Result<u64, CacheError> {
        let n = l2.delete(op, force).await?;
        let msg = BusMessage {
            from: self.id.clone(),
            op: op.clone(),
        };
        l2.publish(&msg, force).await?;
        Ok(n)
    }

    /// Resynchronises after a (re)connect: replay our queued invalidations,
    /// adopt the fleet's version tokens, then flush L1 (it may have missed
    /// invalidations while we were away). A resync that fails leaves L1 as
    /// it was: the L2 stays down and we keep serving from L1, as before it.
    async fn resync(&self, l2: &L2) -> Result<(), CacheError> {
        let pending = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, op) in pending.iter().enumerate() {
            if let Err(e) = self.send(l2, op, true).await {
                // Keep what is not sent yet, ahead of what queued meanwhile.
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
        let flushed = self.store.clear();
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
                        self.follow_bus(&l2, ps).await;
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

    /// Applies the bus's messages until the connection is lost (the stream
    /// ends, a ping fails, or a command found it broken).
    async fn follow_bus(&self, l2: &L2, ps: redis::aio::PubSub) {
        let mut msgs = ps.into_on_message();
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                m = msgs.next() => {
                    let Some(m) = m else { break };
                    let Ok(payload) = m.get_payload::<String>() else { continue };
                    self.on_bus_message(&payload);
                }
                _ = ping.tick() => {
                    if l2.ping().await.is_err() { break }
                }
                _ = l2.broken.notified() => {
                    if !l2.is_up() { break }
                }
            }
        }
    }

    /// Applies another gateway's invalidation (ours come back too: skip them).
    fn on_bus_message(&self, payload: &str) {
        match serde_json::from_str::<BusMessage>(payload) {
            Ok(msg) if msg.from != self.id => {
                let n = self.apply_local(&msg.op);
                debug!(op = ?msg.op, removed = n, "invalidation from the bus");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "malformed message on the invalidation bus"),
        }
    }
}
