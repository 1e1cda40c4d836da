//! The daemon's control loops: telemetry-driven weights and next hops.
//!
//! Each loop gathers its inputs without the engine's lock, then applies them
//! in one short critical section on a blocking thread, and persists only if
//! the engine's generation moved.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, warn};

use super::Daemon;
use crate::{
    api::WeightsReply,
    control::{autoweight::Autoweight, neigh},
    lb::LoadBalancer,
};

/// Runs `apply` on the engine from a blocking thread, persisting the state if
/// it changed; returns how long it took.
async fn apply(
    daemon: &Arc<Daemon>,
    apply: impl FnOnce(&mut LoadBalancer) + Send + 'static,
) -> Duration {
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let Ok(mut lb) = d.lock() else {
            return Duration::ZERO;
        };
        let before = lb.generation();
        apply(&mut lb);
        if lb.generation() != before {
            let _ = d.persist(&lb);
        }
        t0.elapsed()
    })
    .await
    .unwrap_or_default()
}

/// Scrapes, scores and applies telemetry-driven weights as pools fall due.
pub async fn telemetry(daemon: Arc<Daemon>, mut auto: Autoweight) {
    // Each pool keeps its own interval: sleep until the next one is due.
    while let Some(due) = auto.next_due() {
        tokio::time::sleep_until(due.into()).await;
        let Some(plane) = &daemon.plane else { return };
        let members = plane.view.load().members();
        let decisions = auto.tick(&members).await;
        let applied = apply(&daemon, move |lb| {
            for (vip, ds) in decisions {
                let items: Vec<_> = ds
                    .iter()
                    .map(|x| (x.addr, x.weight, x.down.clone()))
                    .collect();
                if let Err(e) = lb.apply_auto_weights(&vip, &items) {
                    warn!(%vip, error = %e, "applying telemetry weights");
                }
                // XDP sheds the VIP's tier by its pool's saturation.
                if let Err(e) = lb.shed_for_load(&vip, saturation(&ds)) {
                    warn!(%vip, error = %e, "setting the VIP's shedding");
                }
            }
        })
        .await;
        if let Ok(mut w) = daemon.weights.lock() {
            *w = WeightsReply {
                cycle_ms: auto.last_cycle.as_secs_f64() * 1e3,
                apply_ms: applied.as_secs_f64() * 1e3,
                pools: auto.report(),
            };
        }
    }
}

/// Keeps every backend's next-hop MAC in line with the neighbour table.
pub async fn resolve(daemon: Arc<Daemon>) {
    let resolver = match neigh::Resolver::new() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "next-hop resolution disabled");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let addrs = match daemon.lock() {
            Ok(lb) => lb.resolvable_backends(),
            Err(_) => return,
        };
        let results = match resolver.resolve_all(&addrs).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "next-hop resolution failed");
                continue;
            }
        };
        apply(&daemon, move |lb| {
            for (addr, r) in results {
                let res = match r {
                    neigh::Resolution::Resolved { mac, .. } => {
                        lb.set_next_hop(addr, Some(mac), None)
                    }
                    neigh::Resolution::Unresolved(reason) => {
                        lb.set_next_hop(addr, None, Some(reason))
                    }
                };
                if let Err(e) = res {
                    warn!(%addr, error = %e, "updating next hop");
                }
            }
        })
        .await;
    }
}

/// A pool's saturation: the mean load (0..1) of its backends that are up
/// and whose telemetry is understood. With none, 0: shedding never acts on
/// a pool it cannot read (the weights fail open there too).
fn saturation(ds: &[crate::control::scoring::Decision]) -> f64 {
    let live: Vec<f64> = ds
        .iter()
        .filter(|d| d.down.is_none() && !d.unknown)
        .map(|d| d.load.clamp(0.0, 1.0))
        .collect();
    if live.is_empty() {
        return 0.0;
    }
    live.iter().sum::<f64>() / live.len() as f64
}
