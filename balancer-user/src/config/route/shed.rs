//! A route's admission settings: `max_in_flight`, the shedding curves of
//! `[route.shed]` and the lower tiers' queue of `[route.queue]`.

use std::time::Duration;

use super::super::{ConfigError, Ctx, RawCacheRoute};
use crate::route::{
    admission::{Curve, Shedding},
    queue::QueueSettings,
};

/// `max_in_flight` and `[…shed]`: curves within 0-100 with start below
/// full, and standard's starting no lower than sheddable's ends, so a tier
/// is shed only once every tier below it is.
pub(super) fn shedding(
    r: &RawCacheRoute,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<Shedding>, ConfigError> {
    let Some(m) = &r.max_in_flight else {
        if let Some(s) = &r.shed {
            return cx.err(
                s.span(),
                field("shed"),
                "shedding needs max_in_flight (a backend's capacity) on the route",
            );
        }
        if let Some(q) = &r.queue {
            return cx.err(
                q.span(),
                field("queue"),
                "a queue needs max_in_flight (a backend's capacity) on the route",
            );
        }
        return Ok(None);
    };
    if !(1..=1_000_000).contains(m.get_ref()) {
        return cx.err(m.span(), field("max_in_flight"), "use 1 to 1000000");
    }
    let mut s = Shedding::new(*m.get_ref() as u32);
    s.queue = queue(r, cx, field)?;
    let Some(raw) = &r.shed else {
        return Ok(Some(s));
    };
    let span = raw.span();
    let curve = |v: [f64; 2], name: &str| {
        let [start, full] = v;
        if !(start.is_finite() && full.is_finite() && 0.0 <= start && start < full && full <= 100.0)
        {
            return cx.err(
                span.clone(),
                field(&format!("shed.{name}")),
                format!("[{start}, {full}]: give [start, full] saturations with 0 <= start < full <= 100"),
            );
        }
        Ok(Curve { start, full })
    };
    if let Some(v) = raw.get_ref().sheddable {
        s.sheddable = curve(v, "sheddable")?;
    }
    if let Some(v) = raw.get_ref().standard {
        s.standard = curve(v, "standard")?;
    }
    if s.standard.start < s.sheddable.full {
        return cx.err(
            span,
            field("shed.standard"),
            format!(
                "standard starts being shed at {} but sheddable is shed fully only at {}: start standard there or later",
                s.standard.start, s.sheddable.full
            ),
        );
    }
    Ok(Some(s))
}

/// `[route.queue]`: where lower tiers wait for headroom (on by default
/// with shedding; `max_waiting = 0` turns it off).
fn queue(
    r: &RawCacheRoute,
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<QueueSettings>, ConfigError> {
    let mut q = QueueSettings::default();
    let Some(raw) = &r.queue else {
        return Ok(Some(q));
    };
    let span = raw.span();
    let raw = raw.get_ref();
    if let Some(n) = raw.max_waiting {
        if n > 1_000_000 {
            return cx.err(
                span,
                field("queue.max_waiting"),
                "use 0 (no queue) to 1000000",
            );
        }
        if n == 0 {
            return Ok(None);
        }
        q.max_waiting = n as usize;
    }
    let wait = |v: Option<u64>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(ms) if (1..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => cx.err(
            span.clone(),
            field(&format!("queue.{name}")),
            format!("{ms}: use 1 to 600000 (ms)"),
        ),
    };
    q.standard_wait = wait(raw.standard_wait_ms, "standard_wait_ms", q.standard_wait)?;
    q.sheddable_wait = wait(raw.sheddable_wait_ms, "sheddable_wait_ms", q.sheddable_wait)?;
    Ok(Some(q))
}
