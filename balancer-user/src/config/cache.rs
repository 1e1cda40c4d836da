//! `[cache]`: the result cache's settings (the routes that use it are
//! `route.rs`).

use std::time::Duration;

use crate::cache::{Settings, l2::RedisSettings};

use super::{ConfigError, Ctx, RawCache, RawConfig};

/// Parses `[cache]` (its defaults when absent).
pub(super) fn parse(raw: &RawConfig, cx: &Ctx<'_>) -> Result<Settings, ConfigError> {
    match &raw.cache {
        Some(c) => settings(c, cx),
        None => Ok(Settings::default()),
    }
}

/// `[cache]`: memory, shards, the Redis L2 and model versions.
fn settings(c: &RawCache, cx: &Ctx<'_>) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    if let Some(m) = &c.memory_mb {
        if !(1..=1 << 20).contains(m.get_ref()) {
            return cx.err(m.span(), "cache.memory_mb", "use 1 to 1048576 (MiB)");
        }
        settings.memory_bytes = *m.get_ref() << 20;
    }
    if let Some(n) = &c.shards {
        if !(1..=1024).contains(n.get_ref()) {
            return cx.err(n.span(), "cache.shards", "use 1 to 1024");
        }
        settings.shards = *n.get_ref();
    }
    settings.redis = redis(c, cx)?;
    settings.versions = c.models.clone();
    Ok(settings)
}

/// The `redis*` keys of `[cache]` (the timeout and prefix are checked even
/// without a URL).
fn redis(c: &RawCache, cx: &Ctx<'_>) -> Result<Option<RedisSettings>, ConfigError> {
    let timeout = match &c.redis_timeout_ms {
        Some(t) if !(1..=10_000).contains(t.get_ref()) => {
            return cx.err(t.span(), "cache.redis_timeout_ms", "use 1 to 10000");
        }
        Some(t) => Duration::from_millis(*t.get_ref()),
        None => Duration::from_millis(100),
    };
    let prefix = match &c.redis_prefix {
        Some(p) if p.get_ref().is_empty() || p.get_ref().contains(char::is_whitespace) => {
            return cx.err(
                p.span(),
                "cache.redis_prefix",
                "a non-empty word without spaces",
            );
        }
        Some(p) => p.get_ref().clone(),
        None => "balancer".into(),
    };
    let Some(u) = &c.redis else {
        return Ok(None);
    };
    let url = u.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("unix://"))
        || redis::Client::open(url.as_str()).is_err()
    {
        return cx.err(
            u.span(),
            "cache.redis",
            "a URL like \"redis://127.0.0.1:6379\" or \"unix:///run/redis.sock\"",
        );
    }
    Ok(Some(RedisSettings {
        url: url.clone(),
        timeout,
        prefix,
    }))
}
