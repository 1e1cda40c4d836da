//! `zone` and `[route.zones]`: the gateway's zone and each backend's, for
//! `pick = "aware"`.

use std::net::{IpAddr, SocketAddr};

use super::super::{ConfigError, Ctx, RawCacheRoute};
use crate::route::zone::Zones;

/// Most backends labelled on one route.
const MAX_LABELLED: usize = 65_536;

/// The route's zones: both `zone` and `[route.zones]`, or neither. Every
/// entry is an address or address:port, labelled once; the gateway's zone
/// must be one the table names (a typo would send everything remote).
pub(super) fn zones(
    r: &RawCacheRoute,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<Zones>, ConfigError> {
    let (local, table) = match (&r.zone, &r.zones) {
        (None, None) => return Ok(None),
        (Some(z), None) => {
            return cx.err(
                z.span(),
                field("zone"),
                "name each backend's zone in [route.zones] too",
            );
        }
        (None, Some(t)) => {
            return cx.err(
                t.span(),
                field("zones"),
                "set the gateway's own zone too (zone = \"...\")",
            );
        }
        (Some(z), Some(t)) => (z, t),
    };
    let span = table.span();
    if !table.get_ref().contains_key(local.get_ref()) {
        return cx.err(
            local.span(),
            field("zone"),
            format!(
                "{:?} is none of [route.zones]'s: {:?}",
                local.get_ref(),
                table.get_ref().keys().collect::<Vec<_>>()
            ),
        );
    }
    let mut z = Zones {
        local: local.get_ref().clone(),
        ..Default::default()
    };
    for (zone, backends) in table.get_ref() {
        if zone.is_empty() {
            return cx.err(span, field("zones"), "a zone's name may not be empty");
        }
        for b in backends {
            let twice = if let Ok(a) = b.parse::<SocketAddr>() {
                z.by_addr.insert(a, zone.clone()).is_some()
            } else if let Ok(ip) = b.parse::<IpAddr>() {
                z.by_ip.insert(ip, zone.clone()).is_some()
            } else {
                return cx.err(
                    span,
                    field(&format!("zones.{zone}")),
                    format!("{b:?}: an address (\"10.0.1.1\") or address:port"),
                );
            };
            if twice {
                return cx.err(
                    span,
                    field(&format!("zones.{zone}")),
                    format!("{b} is labelled twice"),
                );
            }
        }
    }
    if z.by_addr.len() + z.by_ip.len() > MAX_LABELLED {
        return cx.err(
            span,
            field("zones"),
            format!("at most {MAX_LABELLED} backends"),
        );
    }
    Ok(Some(z))
}
