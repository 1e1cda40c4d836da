//! `[[vip]]`: VIPs, their backends and their telemetry, checked by the
//! engine's own validators and reported at the key that broke a rule.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use toml::Spanned;

use super::{ConfigError, Ctx, RawBackend, RawConfig, RawTelemetry, RawVip};
use crate::route::tier::Tier;
use crate::{
    control::{
        autoweight::{BackendTelemetry, PoolTelemetry},
        telemetry::{ServerKind, scrape::ScrapeLimits},
    },
    dataplane::LoadOptions,
    lb::{BackendRecord, BackendSpec, LbError, Mode, VipId, VipRecord, VipSpec},
    net::MacAddr,
};

/// The VIPs with their pools, and the telemetry settings of those that have
/// a `[vip.telemetry]` table.
pub(super) type Vips = (Vec<VipRecord>, BTreeMap<VipId, PoolTelemetry>);

/// Parses every `[[vip]]`; backend slots are numbered in file order.
pub(super) fn parse(
    raw: &RawConfig,
    cx: &Ctx<'_>,
    load: &LoadOptions,
) -> Result<Vips, ConfigError> {
    let mut vips: Vec<VipRecord> = Vec::new();
    let mut telemetry = BTreeMap::new();
    let mut next_slot = 0u32;
    for (i, v) in raw.vip.iter().enumerate() {
        let spec = vip_spec(i, v, &vips, cx)?;
        let mut pool = match &v.telemetry {
            None => None,
            Some(t) => Some(RawTelemetry::validate(t, cx, i)?),
        };
        let mut backends: Vec<BackendRecord> = Vec::new();
        for (j, b) in v.backend.iter().enumerate() {
            let bfield = |f: &str| format!("vip[{i}].backend[{j}].{f}");
            let rec = backend(b, &spec, &backends, next_slot, cx, &bfield)?;
            backend_telemetry(b, &mut pool, rec.addr, cx, &bfield)?;
            backends.push(rec);
            next_slot += 1;
        }
        if let Some(p) = pool {
            telemetry.insert(spec.id, p);
        }
        vips.push(VipRecord {
            spec,
            index: i as u32,
            backends,
        });
    }
    if vips.len() as u32 > load.max_vips {
        return cx.err(
            0..0,
            "vip",
            format!("{} VIPs but max_vips = {}", vips.len(), load.max_vips),
        );
    }
    if next_slot > load.max_backends {
        return cx.err(
            0..0,
            "vip.backend",
            format!(
                "{next_slot} backends but max_backends = {}",
                load.max_backends
            ),
        );
    }
    Ok((vips, telemetry))
}

/// The `i`th `[[vip]]` itself (not its backends), checked against the VIPs
/// before it and by the engine's own rules.
fn vip_spec(
    i: usize,
    v: &RawVip,
    before: &[VipRecord],
    cx: &Ctx<'_>,
) -> Result<VipSpec, ConfigError> {
    let field = |f: &str| format!("vip[{i}].{f}");
    let id: VipId = match v.vip.get_ref().parse() {
        Ok(id) => id,
        Err(e) => return cx.err(v.vip.span(), field("vip"), e),
    };
    if before.iter().any(|r| r.spec.id == id) {
        return cx.err(
            v.vip.span(),
            field("vip"),
            format!("{id} is configured twice"),
        );
    }
    let mode = match &v.mode {
        None => Mode::Tunnel,
        Some(s) => match s.get_ref().parse() {
            Ok(m) => m,
            Err(e) => return cx.err(s.span(), field("mode"), e),
        },
    };
    let tier = match &v.tier {
        None => crate::lb::vip_tier(),
        Some(t) => match Tier::WORDS.iter().find(|(w, _)| w == t.get_ref()) {
            Some((_, tier)) => *tier,
            None => {
                return cx.err(
                    t.span(),
                    field("tier"),
                    "use critical, standard or sheddable",
                );
            }
        },
    };
    let refuse = match &v.refuse {
        None => Default::default(),
        Some(r) => match r.get_ref().parse() {
            Ok(r) => r,
            Err(e) => return cx.err(r.span(), field("refuse"), e),
        },
    };
    let spec = VipSpec {
        id,
        mode,
        affinity_secs: v.affinity_secs.as_ref().map(|a| *a.get_ref()),
        refuse,
        tier,
    };
    // The engine's own rules, reported against the key that broke one.
    if let Err(e) = spec.validate() {
        let span = match (e.field(), &v.affinity_secs) {
            (Some("affinity_secs"), Some(a)) => a.span(),
            _ => v.vip.span(),
        };
        return cx.err(span, field(e.field().unwrap_or("vip")), e.to_string());
    }
    Ok(spec)
}

/// One `[[vip.backend]]` of `vip`, in `slot`, checked against the backends
/// before it and by the engine's own rules.
fn backend(
    b: &RawBackend,
    vip: &VipSpec,
    before: &[BackendRecord],
    slot: u32,
    cx: &Ctx<'_>,
    bfield: &dyn Fn(&str) -> String,
) -> Result<BackendRecord, ConfigError> {
    let addr: IpAddr = match b.address.get_ref().parse() {
        Ok(a) => a,
        Err(_) => {
            return cx.err(
                b.address.span(),
                bfield("address"),
                "an IP address like \"10.0.1.10\" (no port: backends listen on the VIP's port)",
            );
        }
    };
    if before.iter().any(|r| r.addr == addr) {
        return cx.err(
            b.address.span(),
            bfield("address"),
            format!("{addr} is listed twice in this pool"),
        );
    }
    let weight = b.weight.as_ref().map(|w| *w.get_ref()).unwrap_or(1);
    let mac = match &b.mac {
        None => None,
        Some(m) => match m.get_ref().parse::<MacAddr>() {
            Ok(mac) => Some(mac),
            Err(e) => return cx.err(m.span(), bfield("mac"), e.to_string()),
        },
    };
    if let Err(e) = (BackendSpec { addr, weight, mac }).validate(vip) {
        let span = match (&e, &b.weight) {
            (LbError::BadWeight(_), Some(w)) => w.span(),
            _ => b.address.span(),
        };
        return cx.err(span, bfield(e.field().unwrap_or("address")), e.to_string());
    }
    Ok(BackendRecord {
        addr,
        weight,
        drained: false,
        mac,
        mac_static: mac.is_some(),
        slot,
        auto_weight: None,
    })
}

/// A backend's telemetry endpoints and models, which need the VIP's
/// `[vip.telemetry]` table.
fn backend_telemetry(
    b: &RawBackend,
    pool: &mut Option<PoolTelemetry>,
    addr: IpAddr,
    cx: &Ctx<'_>,
    bfield: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Some(t) = pool {
        let mut endpoints = Vec::new();
        for (k, m) in b.metrics.iter().enumerate() {
            let kind: ServerKind = match m.kind.get_ref().parse() {
                Ok(k) => k,
                Err(e) => {
                    return cx.err(m.kind.span(), bfield(&format!("metrics[{k}].kind")), e);
                }
            };
            let url = m.url.get_ref();
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return cx.err(
                    m.url.span(),
                    bfield(&format!("metrics[{k}].url")),
                    "an http:// URL like \"http://10.0.1.10:8000/metrics\"",
                );
            }
            endpoints.push((kind, url.clone()));
        }
        if let Some(u) = &b.models_url
            && !u.get_ref().starts_with("http://")
        {
            return cx.err(
                u.span(),
                bfield("models_url"),
                "an http:// URL like \"http://10.0.1.10:8000/v1/models\"",
            );
        }
        t.backends.insert(
            addr,
            BackendTelemetry {
                endpoints,
                models: b.models.clone().map(|m| m.into_iter().collect()),
                models_url: b.models_url.as_ref().map(|u| u.get_ref().clone()),
            },
        );
    } else if !b.metrics.is_empty() || b.models.is_some() || b.models_url.is_some() {
        let span = b
            .metrics
            .first()
            .map(|m| m.url.span())
            .unwrap_or(b.address.span());
        return cx.err(
            span,
            bfield("metrics"),
            "metrics and models need a [vip.telemetry] table on the VIP",
        );
    }
    Ok(())
}

impl RawTelemetry {
    fn validate(raw: &Spanned<Self>, cx: &Ctx<'_>, i: usize) -> Result<PoolTelemetry, ConfigError> {
        let t = raw.get_ref();
        let field = |f: &str| format!("vip[{i}].telemetry.{f}");
        let interval = t.interval_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&interval) {
            return cx.err(
                raw.span(),
                field("interval_ms"),
                format!("{interval}: use 100 to 60000"),
            );
        }
        let timeout = t.timeout_ms.unwrap_or(interval.min(1000) * 4 / 5);
        if timeout == 0 || timeout > interval {
            return cx.err(
                raw.span(),
                field("timeout_ms"),
                format!("{timeout}: use 1 to interval_ms ({interval})"),
            );
        }
        let max_body = t.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_body) {
            return cx.err(raw.span(), field("max_body_bytes"), "use 1024 to 67108864");
        }
        let (fall, rise) = (t.fall.unwrap_or(3), t.rise.unwrap_or(2));
        if !(1..=100).contains(&fall) || !(1..=100).contains(&rise) {
            return cx.err(raw.span(), field("fall"), "fall and rise: use 1 to 100");
        }
        if let Err(e) = t.policy.check() {
            return cx.err(raw.span(), field("policy"), e);
        }
        Ok(PoolTelemetry {
            interval: Duration::from_millis(interval),
            limits: ScrapeLimits {
                timeout: Duration::from_millis(timeout),
                max_body,
            },
            fall,
            rise,
            model: t.model.clone(),
            health: t.health.clone(),
            policy: t.policy,
            backends: BTreeMap::new(),
        })
    }
}
