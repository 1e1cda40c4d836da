//! `[dataplane]`: map sizes (fixed at load) and the data plane's settings.

use std::net::IpAddr;

use toml::Spanned;

use super::{ConfigError, Ctx, RawDataplane};
use crate::{dataplane::LoadOptions, lb::DataplaneSettings};

/// Parses `[dataplane]` into the loader's options and the engine's settings,
/// each checked by its owner's validator.
pub(super) fn parse(
    p: &RawDataplane,
    cx: &Ctx<'_>,
) -> Result<(LoadOptions, DataplaneSettings), ConfigError> {
    let mut load = LoadOptions::default();
    let mut settings = DataplaneSettings::default();
    let pick = |v: &Option<Spanned<u32>>, default: u32| {
        v.as_ref().map(|s| *s.get_ref()).unwrap_or(default)
    };
    load.ring_size = pick(&p.ring_size, load.ring_size);
    load.max_vips = pick(&p.max_vips, load.max_vips);
    load.max_backends = pick(&p.max_backends, load.max_backends);
    load.max_flows = pick(&p.max_flows, load.max_flows);
    load.max_affinity = pick(&p.max_affinity, load.max_affinity);
    if let Err(e) = load.validate() {
        let span = [
            &p.ring_size,
            &p.max_vips,
            &p.max_backends,
            &p.max_flows,
            &p.max_affinity,
        ]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| s.span()))
        .next()
        .unwrap_or(0..0);
        return cx.err(span, "dataplane", e.to_string());
    }
    settings.mtu = pick(&p.mtu, settings.mtu);
    if let Some(s) = &p.tunnel_src_v4 {
        match parse_prefix(s.get_ref()) {
            Some((IpAddr::V4(a), l)) => {
                settings.tunnel_src_v4 = a;
                settings.tunnel_src_v4_len = l;
            }
            _ => {
                return cx.err(
                    s.span(),
                    "dataplane.tunnel_src_v4",
                    "an IPv4 prefix like \"172.16.0.0/16\"",
                );
            }
        }
    }
    if let Some(s) = &p.tunnel_src_v6 {
        match parse_prefix(s.get_ref()) {
            Some((IpAddr::V6(a), l)) => {
                settings.tunnel_src_v6 = a;
                settings.tunnel_src_v6_len = l;
            }
            _ => {
                return cx.err(
                    s.span(),
                    "dataplane.tunnel_src_v6",
                    "an IPv6 prefix like \"fd00:ba1a::/96\"",
                );
            }
        }
    }
    if let Err(e) = settings.validate() {
        let (span, field) = match e.field() {
            Some("mtu") => (p.mtu.as_ref().map(|s| s.span()), "dataplane.mtu"),
            Some("tunnel_src_v4") => (
                p.tunnel_src_v4.as_ref().map(|s| s.span()),
                "dataplane.tunnel_src_v4",
            ),
            _ => (
                p.tunnel_src_v6.as_ref().map(|s| s.span()),
                "dataplane.tunnel_src_v6",
            ),
        };
        return cx.err(span.unwrap_or(0..0), field, e.to_string());
    }

    Ok((load, settings))
}

/// Parses `a.b.c.d/len` or `a:b::/len`.
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    Some((a.parse().ok()?, l.parse().ok()?))
}
