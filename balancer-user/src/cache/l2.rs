//! The shared L2 in Redis and the invalidation bus.
//!
//! Layout under the configured prefix `P` (model names hex-encoded, so glob
//! patterns and separators in them cannot collide):
//!
//! - `P:e:<model>:<key>`: an entry, `u32` big-endian meta length, meta JSON,
//!   body; it expires with the entry (`PX`);
//! - `P:v:<model>`: the model's current version token;
//! - channel `P:inval`: [`Invalidation`]s as JSON, each tagged with the
//!   gateway that sent it.
//!
//! Every command runs under a short timeout. When one fails the connection
//! is marked broken and the caller carries on without L2; the cache's
//! supervisor ([`super::Cache::run_l2`]) reconnects.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use super::{CacheError, Invalidation, key::Key, store::Entry};

/// Where the L2 lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Key prefix, shared by the gateways of one fleet.
    pub prefix: String,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    status: u16,
    content_type: Option<String>,
    created_ms: u64,
    expires_ms: u64,
    cost_s: f64,
    model: String,
    version: String,
    prompt: String,
}

/// Encodes an entry for Redis.
pub fn encode(e: &Entry) -> Vec<u8> {
    let meta = serde_json::to_vec(&Meta {
        status: e.status,
        content_type: e.content_type.clone(),
        created_ms: e.created_ms,
        expires_ms: e.expires_ms,
        cost_s: e.cost_s,
        model: e.model.clone(),
        version: e.version.clone(),
        prompt: e.prompt.clone(),
    })
    .unwrap_or_default();
    let mut out = Vec::with_capacity(4 + meta.len() + e.body.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&e.body);
    out
}

/// Decodes what [`encode`] wrote; `None` for anything else.
pub fn decode(b: &[u8]) -> Option<Entry> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let meta: Meta = serde_json::from_slice(b.get(4..4 + len)?).ok()?;
    Some(Entry {
        status: meta.status,
        content_type: meta.content_type,
        body: Bytes::copy_from_slice(b.get(4 + len..)?),
        created_ms: meta.created_ms,
        expires_ms: meta.expires_ms,
        cost_s: meta.cost_s,
        model: meta.model,
        version: meta.version,
        prompt: meta.prompt,
    })
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A message on the bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BusMessage {
    /// The sending gateway's id (it ignores its own messages).
    pub from: String,
    /// What to invalidate.
    pub op: Invalidation,
}

/// The Redis side of the cache.
pub struct L2 {
    settings: RedisSettings,
    /// The URL without its password, for stats and messages.
    shown_url: String,
    client: redis::Client,
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Wakes the supervisor when a command finds the connection broken.
    pub(super) broken: Notify,
    /// Successful (re)connections.
    pub connects: AtomicU64,
    /// Commands that failed or timed out.
    pub errors: AtomicU64,
}

impl L2 {
    /// Checks the URL; connects later (see [`super::Cache::run_l2`]).
    pub fn new(settings: RedisSettings) -> Result<Self, CacheError> {
        let shown_url = redacted(&settings.url);
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| CacheError::Redis {
            context: format!("redis url {shown_url:?}"),
            message: e.to_string(),
        })?;
        Ok(Self {
            settings,
            shown_url,
            client,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            broken: Notify::new(),
            connects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// The configured URL, its password (if any) replaced by `***`.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Whether commands currently go to Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn channel(&self) -> String {
        format!("{}:inval", self.settings.prefix)
    }

    fn entry_key(&self, model: &str, key: &Key) -> String {
        format!("{}:e:{}:{key}", self.settings.prefix, hex(model))
    }

    fn version_key(&self, model: &str) -> String {
        format!("{}:v:{}", self.settings.prefix, hex(model))
    }

    /// Opens the command connection and the subscription. Does not mark the
    /// L2 up: the supervisor does once it has resynchronised.
    pub(super) async fn connect(&self) -> Result<redis::aio::PubSub, CacheError> {
        let err = |context: &str| {
            let context = context.to_string();
            move |e: redis::RedisError| CacheError::Redis {
                context,
                message: e.to_string(),
            }
        };
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.settings.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.settings.timeout);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(err("connecting"))?;
        let mut ps = tokio::time::timeout(
            self.settings.timeout.max(Duration::from_millis(200)),
            self.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| CacheError::Redis {
            context: "subscribing".into(),
            message: "timed out".into(),
        })?
        .map_err(err("subscribing"))?;
        ps.subscribe(self.channel())
            .await
            .map_err(err("subscribing"))?;
        *self.conn.write().await = Some(conn);
        Ok(ps)
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        if up {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn disconnect(&self) {
        self.up.store(false, Ordering::Release);
        *self.conn.write().await = None;
    }

    /// Runs one command with the timeout; on failure marks the connection
    /// broken. `force` runs it even while the L2 is not marked up (resync).
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        force: bool,
    ) -> Result<T, CacheError> {
        if !force && !self.is_up() {
            return Err(CacheError::L2Down);
        }
        let Some(mut conn) = self.conn.read().await.clone() else {
            return Err(CacheError::L2Down);
        };
        let r = tokio::time::timeout(self.settings.timeout, cmd.query_async::<T>(&mut conn)).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if !is_transport(&e) => {
                // Redis answered, with an error (OOM at maxmemory, READONLY
                // after a failover, NOPERM, MISCONF): the connection is fine.
                // Count it and skip this command; reconnecting would flush
                // L1 for nothing.
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(CacheError::Redis {
                    context: "reply".into(),
                    message: e.to_string(),
                })
            }
            Ok(Err(e)) => {
                self.fail();
                Err(CacheError::Redis {
                    context: "command".into(),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                self.fail();
                Err(CacheError::Redis {
                    context: "command".into(),
                    message: format!("no reply within {:?}", self.settings.timeout),
                })
            }
        }
    }

    fn fail(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::Release);
        self.broken.notify_one();
    }

    /// Checks the connection.
    pub(super) async fn ping(&self) -> Result<(), CacheError> {
        self.query::<String>(&redis::cmd("PING"), true)
            .await
            .map(|_| ())
    }

    /// Reads an entry.
    pub async fn get(&self, model: &str, key: &Key) -> Result<Option<Entry>, CacheError> {
        let v: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.entry_key(model, key)), false)
            .await?;
        Ok(v.as_deref().and_then(decode))
    }

    /// Writes an entry that expires with it.
    pub async fn put(&self, key: &Key, e: &Entry, ttl: Duration) -> Result<(), CacheError> {
        let ms = ttl.as_millis().max(1) as u64;
        self.query::<()>(
            redis::cmd("SET")
                .arg(self.entry_key(&e.model, key))
                .arg(encode(e))
                .arg("PX")
                .arg(ms),
            false,
        )
        .await
    }

    /// Deletes entries of `model` (all, one key, or those whose prompt starts
    /// with a prefix); returns how many. `force` as in resync.
    pub(super) async fn delete(&self, op: &Invalidation, force: bool) -> Result<u64, CacheError> {
        match op {
            Invalidation::Key { model, key } => {
                let k = Key::parse(key).ok_or_else(|| CacheError::BadKey(key.clone()))?;
                self.query::<u64>(redis::cmd("DEL").arg(self.entry_key(model, &k)), force)
                    .await
            }
            Invalidation::Model { model } | Invalidation::Prefix { model, .. } => {
                let pattern = format!("{}:e:{}:*", self.settings.prefix, hex(model));
                let mut n = 0;
                for k in self.scan(&pattern, force).await? {
                    let doomed = match op {
                        Invalidation::Prefix { prefix, .. } => {
                            let v: Option<Vec<u8>> =
                                self.query(redis::cmd("GET").arg(&k), force).await?;
                            v.as_deref()
                                .and_then(decode)
                                .is_some_and(|e| e.prompt.starts_with(prefix.as_str()))
                        }
                        _ => true,
                    };
                    if doomed {
                        n += self.query::<u64>(redis::cmd("DEL").arg(&k), force).await?;
                    }
                }
                Ok(n)
            }
            Invalidation::Bump { model, token } => {
                self.query::<()>(
                    redis::cmd("SET").arg(self.version_key(model)).arg(token),
                    force,
                )
                .await?;
                Ok(0)
            }
        }
    }

    /// Broadcasts an invalidation to the other gateways.
    pub(super) async fn publish(&self, msg: &BusMessage, force: bool) -> Result<(), CacheError> {
        let payload = serde_json::to_string(msg).unwrap_or_default();
        self.query::<u64>(
            redis::cmd("PUBLISH").arg(self.channel()).arg(payload),
            force,
        )
        .await
        .map(|_| ())
    }

    /// Every key matching `pattern` (SCAN, so Redis is never blocked).
    async fn scan(&self, pattern: &str, force: bool) -> Result<Vec<String>, CacheError> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                    force,
                )
                .await?;
            out.extend(keys);
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }

    /// Every model's version token in Redis, as (model, token).
    pub(super) async fn versions(&self) -> Result<Vec<(String, String)>, CacheError> {
        let strip = format!("{}:v:", self.settings.prefix);
        let mut out = Vec::new();
        for k in self.scan(&format!("{strip}*"), true).await? {
            let Some(model) = k.strip_prefix(&strip).and_then(unhex) else {
                continue;
            };
            let v: Option<String> = self.query(redis::cmd("GET").arg(&k), true).await?;
            if let Some(v) = v {
                out.push((model, v));
            }
        }
        Ok(out)
    }
}

/// Whether a command's error means the connection is gone (I/O, a reply we
/// cannot parse, authentication lost), as opposed to an error reply.
fn is_transport(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}

/// `url` with its password replaced by `***`: the one in
/// `scheme://user:password@host`, and a `pass=` / `password=` query
/// parameter (how `unix://` and `redis+unix://` URLs carry it). The URL is
/// shown in stats, the CLI and error messages.
fn redacted(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let mut out = redacted_authority(url);
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn redacted_authority(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://gw:s3cret@10.0.0.1:6379/2",
                "redis://gw:***@10.0.0.1:6379/2",
            ),
            ("redis://:s3cret@host", "redis://:***@host"),
            ("rediss://user@host", "rediss://user@host"),
            (
                "redis+unix:///run/redis.sock",
                "redis+unix:///run/redis.sock",
            ),
            ("not a url", "not a url"),
            (
                "unix:///run/redis.sock?db=1&pass=s3cret",
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///run/redis.sock?password=s3cret&user=gw",
                "redis+unix:///run/redis.sock?password=***&user=gw",
            ),
            (
                "redis://gw:s3cret@host/0?protocol=resp3",
                "redis://gw:***@host/0?protocol=resp3",
            ),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_rejected() {
        let e = Entry {
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(b"{\"x\":1}"),
            created_ms: 1,
            expires_ms: 2,
            cost_s: 0.5,
            model: "m".into(),
            version: "v".into(),
            prompt: "p".into(),
        };
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0, 0, 0, 9, b'{']), None);
        assert_eq!(decode(&[0, 0, 0, 2, b'{', b'}']), None);
        assert_eq!(hex("a:*"), "613a2a");
        assert_eq!(unhex("613a2a").as_deref(), Some("a:*"));
        assert_eq!(unhex("6"), None);
    }
}
