//! `[[route]]` (and its deprecated alias `[[cache_route]]`): an HTTP
//! listener in front of a pool, with the result cache as an optional stage.

use std::{net::SocketAddr, time::Duration};

use hyper::header::{self, HeaderName};
use toml::Spanned;

use crate::{
    cache::{
        key::KeyScope,
        pick::Pick,
        proxy::{MarkDown, RouteConfig},
    },
    lb::VipId,
    route::tier::{Tenant, Tier, TierPolicy},
};

use super::{
    CachePool, CacheRoute, ConfigError, Ctx, RawCacheRoute, RawConfig, RawFallback, RawTenant,
};
use crate::cache::proxy::Fallback;

/// Parses every route: `[[route]]` first, then the deprecated
/// `[[cache_route]]` tables, each of which adds a warning.
pub(super) fn parse(
    raw: &RawConfig,
    cx: &Ctx<'_>,
) -> Result<(Vec<CacheRoute>, Vec<String>), ConfigError> {
    let mut routes: Vec<CacheRoute> = Vec::new();
    let mut warnings = Vec::new();
    let tables = raw
        .route
        .iter()
        .enumerate()
        .map(|(i, r)| ("route", i, r))
        .chain(
            raw.cache_route
                .iter()
                .enumerate()
                .map(|(i, r)| ("cache_route", i, r)),
        );
    for (table, i, r) in tables {
        let route = route(table, i, r, &routes, cx)?;
        if table == "cache_route" {
            let (line, _) = super::line_col(cx.src, r.listen.span().start);
            warnings.push(format!(
                "{}:{line}: [[cache_route]] is deprecated: rename it [[route]] (same keys; the cache stays on unless cache = false)",
                cx.path.display()
            ));
        }
        routes.push(route);
    }
    if raw.cache.is_some() && !routes.iter().any(|r| r.route.cache) {
        return cx.err(
            0..0,
            "cache",
            "a [cache] table without any [[route]] that caches (cache = true) caches nothing",
        );
    }
    Ok((routes, warnings))
}

/// One route, the `i`th of its `table`, checked against the routes before
/// it.
fn route(
    table: &str,
    i: usize,
    r: &RawCacheRoute,
    before: &[CacheRoute],
    cx: &Ctx<'_>,
) -> Result<CacheRoute, ConfigError> {
    let field = |f: &str| format!("{table}[{i}].{f}");
    let name = r
        .name
        .as_ref()
        .map(|n| n.get_ref().clone())
        // Numbered across both tables, so unnamed routes of each differ.
        .unwrap_or_else(|| format!("route{}", before.len()));
    if name.is_empty() || before.iter().any(|x| x.route.name == name) {
        let span = r.name.as_ref().map(|n| n.span()).unwrap_or(r.listen.span());
        return cx.err(
            span,
            field("name"),
            format!("{name:?}: names must be unique and non-empty"),
        );
    }
    let listen: SocketAddr = match r.listen.get_ref().parse() {
        Ok(a) => a,
        Err(_) => {
            return cx.err(
                r.listen.span(),
                field("listen"),
                "an address and port like \"127.0.0.1:8080\"",
            );
        }
    };
    if before.iter().any(|x| x.route.listen == listen) {
        return cx.err(
            r.listen.span(),
            field("listen"),
            format!("{listen} is used by another route"),
        );
    }
    let pool = pool(
        (&r.backends, &r.vip, &r.backend_port),
        r.listen.span(),
        cx,
        &field,
    )?;
    let (fallback, fallback_pool) = match &r.fallback {
        Some(f) => {
            let (cfg, pool) = fallback(f, cx, &field)?;
            (Some(cfg), Some(pool))
        }
        None => (None, None),
    };
    let ranged = |v: &Option<Spanned<u64>>, f: &str, default: u64, lo: u64, hi: u64| match v {
        None => Ok(default),
        Some(x) if (lo..=hi).contains(x.get_ref()) => Ok(*x.get_ref()),
        Some(x) => cx.err(x.span(), field(f), format!("use {lo} to {hi}")),
    };
    let ttl = ranged(&r.ttl_secs, "ttl_secs", 300, 1, 7 * 86_400)?;
    let stale = ranged(&r.stale_secs, "stale_secs", 0, 0, 7 * 86_400)?;
    let max_object = ranged(
        &r.max_object_bytes,
        "max_object_bytes",
        1 << 20,
        1,
        64 << 20,
    )?;
    let max_request = ranged(
        &r.max_request_bytes,
        "max_request_bytes",
        1 << 20,
        1,
        64 << 20,
    )?;
    let timeout = ranged(&r.timeout_ms, "timeout_ms", 60_000, 1, 600_000)?;
    let header_timeout = ranged(
        &r.header_timeout_ms,
        "header_timeout_ms",
        10_000,
        1,
        600_000,
    )?;
    let body_timeout = ranged(&r.body_timeout_ms, "body_timeout_ms", 30_000, 1, 600_000)?;
    let max_connections = ranged(&r.max_connections, "max_connections", 1024, 1, 1 << 20)?;
    // At least one whole body must fit, or a request of unknown length
    // could never be read.
    let body_budget = ranged(
        &r.body_budget_bytes,
        "body_budget_bytes",
        64 * max_request,
        max_request,
        1 << 40,
    )?;
    let (scope, credential_headers) = scope(r, cx, &field)?;
    let mark_down = MarkDown {
        after: ranged(&r.mark_down_after, "mark_down_after", 3, 1, 1000)? as u32,
        cooldown: Duration::from_millis(ranged(
            &r.mark_down_ms,
            "mark_down_ms",
            10_000,
            1,
            3_600_000,
        )?),
    };
    let pick = word(&r.pick, &Pick::ALL, cx, field("pick"))?;
    let models_refresh = ranged(
        &r.models_refresh_ms,
        "models_refresh_ms",
        5_000,
        100,
        600_000,
    )?;
    // Absent: a backend without the model is never sent it.
    let cold_start = match &r.cold_start_ms {
        None => None,
        Some(_) => Some(ranged(&r.cold_start_ms, "cold_start_ms", 0, 1, 3_600_000)?),
    };
    let tiers = tiers(r, cx, &field)?;
    let shedding = shed::shedding(r, cx, &field)?;
    let zones = zones::zones(r, cx, &field)?;
    Ok(CacheRoute {
        route: RouteConfig {
            name,
            listen,
            ttl: Duration::from_secs(ttl),
            stale: Duration::from_secs(stale),
            max_object_bytes: max_object,
            max_request_bytes: max_request,
            exclude_fields: r
                .exclude_fields
                .clone()
                .unwrap_or_else(|| vec!["user".into()]),
            deterministic: r.deterministic.unwrap_or(false),
            timeout: Duration::from_millis(timeout),
            header_timeout: Duration::from_millis(header_timeout),
            body_timeout: Duration::from_millis(body_timeout),
            max_connections: max_connections as usize,
            body_budget_bytes: body_budget,
            scope,
            credential_headers,
            mark_down,
            pick,
            models_refresh: Duration::from_millis(models_refresh),
            cold_start: cold_start.map(Duration::from_millis),
            cache: r.cache.unwrap_or(true),
            tiers,
            shedding,
            fallback,
            zones,
        },
        pool,
        fallback_pool,
    })
}

/// A setting spelled as one of `all`'s words (its default when absent);
/// the error lists the words.
fn word<T: Copy + Default>(
    w: &Option<Spanned<String>>,
    all: &[(&str, T)],
    cx: &Ctx<'_>,
    field: String,
) -> Result<T, ConfigError> {
    let Some(w) = w else {
        return Ok(T::default());
    };
    match all.iter().find(|(l, _)| *l == w.get_ref()) {
        Some((_, v)) => Ok(*v),
        None => {
            let words: Vec<_> = all.iter().map(|(l, _)| *l).collect();
            cx.err(
                w.span(),
                field,
                format!("{:?}: use one of {}", w.get_ref(), words.join(", ")),
            )
        }
    }
}

/// `default_tier`, `priority_field` and the `[[…tenant]]` tables: names
/// unique, every key non-empty and naming one tenant, and no tenant's
/// default above its max.
fn tiers(
    r: &RawCacheRoute,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<TierPolicy, ConfigError> {
    let default = word(&r.default_tier, &Tier::WORDS, cx, field("default_tier"))?;
    let mut policy = TierPolicy {
        default,
        priority_field: r.priority_field.unwrap_or(false),
        ..TierPolicy::default()
    };
    for (j, t) in r.tenant.iter().enumerate() {
        let f = |k: &str| field(&format!("tenant[{j}].{k}"));
        policy.tenants.push(tenant(t, default, &policy, cx, &f)?);
        // Messages never echo a key: they may reach a log.
        let keys: Option<Vec<&str>> = match t.keys.get_ref() {
            toml::Value::Array(a) => a.iter().map(toml::Value::as_str).collect(),
            _ => None,
        };
        let Some(keys) = keys else {
            return cx.err(
                t.keys.span(),
                f("keys"),
                "a list of strings, such as [\"sk-...\"]",
            );
        };
        for k in &keys {
            // What a header value can carry, so that a key can match.
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return cx.err(
                    t.keys.span(),
                    f("keys"),
                    "keys are non-empty words of visible ASCII, without spaces",
                );
            }
            if policy.keys.insert(k.to_string(), j).is_some() {
                return cx.err(t.keys.span(), f("keys"), "a key names one tenant only");
            }
        }
        if keys.is_empty() {
            return cx.err(t.keys.span(), f("keys"), "list at least one key");
        }
    }
    Ok(policy)
}

/// One tenant, checked against those before it.
fn tenant(
    t: &RawTenant,
    default: Tier,
    before: &TierPolicy,
    cx: &Ctx<'_>,
    f: &dyn Fn(&str) -> String,
) -> Result<Tenant, ConfigError> {
    let name = t.name.get_ref();
    if name.is_empty() || before.tenants.iter().any(|x| &x.name == name) {
        return cx.err(
            t.name.span(),
            f("name"),
            format!("{name:?}: names must be unique and non-empty"),
        );
    }
    let tier = match &t.tier {
        Some(_) => word(&t.tier, &Tier::WORDS, cx, f("tier"))?,
        None => default,
    };
    let max_tier = match &t.max_tier {
        Some(_) => word(&t.max_tier, &Tier::WORDS, cx, f("max_tier"))?,
        None => tier,
    };
    if tier > max_tier {
        // Name what the user wrote: the tier, or a max_tier below the
        // route's default_tier that the tenant's tier came from.
        return match (&t.tier, &t.max_tier) {
            (Some(s), _) => cx.err(
                s.span(),
                f("tier"),
                format!("{tier} is above this tenant's max_tier ({max_tier})"),
            ),
            (None, Some(m)) => cx.err(
                m.span(),
                f("max_tier"),
                format!(
                    "{max_tier} is below the tier this tenant's requests get by default ({tier}, the route's default_tier): set tier too"
                ),
            ),
            // Not reached (max_tier defaults to tier), but never a panic.
            (None, None) => cx.err(
                t.name.span(),
                f("tier"),
                format!("{tier} is above this tenant's max_tier ({max_tier})"),
            ),
        };
    }
    Ok(Tenant {
        name: name.clone(),
        tier,
        max_tier,
    })
}

/// `key_scope` (default `shared`) and `credential_headers` (default
/// `authorization` and `x-api-key`).
fn scope(
    r: &RawCacheRoute,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<(KeyScope, Vec<HeaderName>), ConfigError> {
    let scope = word(&r.key_scope, &KeyScope::ALL, cx, field("key_scope"))?;
    let Some(names) = &r.credential_headers else {
        let default = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];
        return Ok((scope, default.into()));
    };
    let mut headers = Vec::new();
    for n in names.get_ref() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if !headers.contains(&h) => headers.push(h),
            _ => {
                return cx.err(
                    names.span(),
                    field("credential_headers"),
                    format!("{n:?}: give distinct header names such as \"authorization\""),
                );
            }
        }
    }
    if headers.is_empty() && scope != KeyScope::Shared {
        return cx.err(
            names.span(),
            field("credential_headers"),
            "list at least one header: this key_scope reads credentials",
        );
    }
    Ok((scope, headers))
}

/// Where a route's misses go: exactly one of `backends = [..]` and
/// `vip = ".."` with `backend_port`.
/// The pool's keys, as a route and its fallback both spell them.
type PoolKeys<'a> = (
    &'a Option<Spanned<Vec<String>>>,
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<u16>>,
);

/// `[route.fallback]`: its pool, the model it serves, and the tiers that
/// fall back (default sheddable; never critical).
fn fallback(
    f: &Spanned<RawFallback>,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<(Fallback, CachePool), ConfigError> {
    let ff = |k: &str| field(&format!("fallback.{k}"));
    let r = f.get_ref();
    let pool = pool((&r.backends, &r.vip, &r.backend_port), f.span(), cx, &ff)?;
    let mut tiers = [false; 3];
    match &r.tiers {
        None => tiers[Tier::Sheddable.index()] = true,
        Some(list) => {
            for w in list.get_ref() {
                match Tier::WORDS.iter().find(|(x, _)| x == w).map(|(_, t)| *t) {
                    Some(Tier::Critical) => {
                        return cx.err(
                            list.span(),
                            ff("tiers"),
                            "critical never falls back: it is never shed",
                        );
                    }
                    Some(t) => tiers[t.index()] = true,
                    None => {
                        return cx.err(
                            list.span(),
                            ff("tiers"),
                            format!("{w:?}: use \"standard\" or \"sheddable\""),
                        );
                    }
                }
            }
            if list.get_ref().is_empty() {
                return cx.err(
                    list.span(),
                    ff("tiers"),
                    "name at least one tier (or remove [route.fallback])",
                );
            }
        }
    }
    let model = match &r.model {
        Some(m) if m.get_ref().is_empty() || m.get_ref().len() > 256 => {
            return cx.err(m.span(), ff("model"), "a model name of 1 to 256 bytes");
        }
        m => m.as_ref().map(|m| m.get_ref().clone()),
    };
    Ok((Fallback { tiers, model }, pool))
}

fn pool(
    (backends, vip, backend_port): PoolKeys<'_>,
    at: std::ops::Range<usize>,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<CachePool, ConfigError> {
    match (backends, vip) {
        (Some(b), None) => {
            let mut addrs = Vec::new();
            for a in b.get_ref() {
                match a.parse::<SocketAddr>() {
                    Ok(x) => addrs.push(x),
                    Err(_) => {
                        return cx.err(
                            b.span(),
                            field("backends"),
                            format!("{a:?}: use \"address:port\" like \"10.0.1.10:8000\""),
                        );
                    }
                }
            }
            if addrs.is_empty() {
                return cx.err(b.span(), field("backends"), "list at least one backend");
            }
            Ok(CachePool::Static(addrs))
        }
        (None, Some(v)) => {
            let vip: VipId = match v.get_ref().parse() {
                Ok(id) => id,
                Err(e) => return cx.err(v.span(), field("vip"), e),
            };
            let Some(port) = backend_port else {
                return cx.err(
                    v.span(),
                    field("backend_port"),
                    "missing: the port the VIP's backends serve HTTP on",
                );
            };
            Ok(CachePool::Vip {
                vip,
                port: *port.get_ref(),
            })
        }
        _ => cx.err(
            at,
            field("backends"),
            "give exactly one of backends = [..] or vip = \"..\" (with backend_port)",
        ),
    }
}

mod shed;
mod zones;

#[cfg(test)]
mod tests;
