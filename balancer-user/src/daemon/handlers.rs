//! The daemon's shared state and its answers to the admin API.
//!
//! Readers (status, stats, VIP lists, metrics) take the engine's published
//! [`PoolView`](crate::lb::PoolView) and read counters through the shared
//! stats maps: they never wait for the engine's lock, which writers hold
//! through ring grace periods.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Instant,
};

use balancer_common::Counter;
use tracing::error;

use super::state;
use crate::{
    api::{
        ApiError, BackendStatsRow, DownBackend, Reply, Request, RouteStatsRow, StatsReply,
        StatusReply, VipStatsRow, WeightsReply, server::Handler,
    },
    cache::{Cache, CacheError, InvalidateReply, proxy::Route},
    clock::now_ms,
    config::Config,
    dataplane::{
        Programs,
        maps::{FlowTable, StatsMaps},
    },
    lb::{BackendSpec, LbError, LoadBalancer, Pools, VipId},
    route::tier::Tier,
};

/// The data plane as the daemon holds it: the engine behind its lock for
/// writers, and what readers use without it.
pub struct Plane {
    /// The engine; only changes take this lock.
    pub lb: Mutex<LoadBalancer>,
    /// The published pool view.
    pub view: Arc<Pools>,
    /// Counters, shared with the engine.
    pub stats: Arc<StatsMaps>,
    /// The connection table (read-only).
    pub flows: Arc<FlowTable>,
    /// Ring size, fixed at load.
    pub ring_size: u32,
    /// The attached programs.
    pub programs: Programs,
}

impl Plane {
    /// Wraps an engine and its programs.
    pub fn new(lb: LoadBalancer, programs: Programs) -> Self {
        let maps = lb.maps();
        Self {
            view: lb.view(),
            stats: maps.stats.clone(),
            flows: maps.flows.clone(),
            ring_size: maps.sizes.ring_size,
            lb: Mutex::new(lb),
            programs,
        }
    }
}

/// Shared daemon state.
pub struct Daemon {
    /// The validated configuration.
    pub cfg: Config,
    /// `None` on a cache-only gateway (no `daemon.iface`).
    pub plane: Option<Plane>,
    /// The cache, when routes are configured.
    pub cache: Option<Arc<Cache>>,
    /// When the daemon started.
    pub started: Instant,
    /// The last autoweight report.
    pub weights: Mutex<WeightsReply>,
    /// The routes, once serving (they are made after the daemon: their
    /// pools read its view).
    pub routes: OnceLock<Vec<Arc<Route>>>,
}

/// The HTTP status of an engine error: its kind, not its text, decides.
/// Everything but a missing or duplicate item and a kernel failure is the
/// caller's to fix.
fn lb_error(e: LbError) -> ApiError {
    let msg = e.to_string();
    match &e {
        LbError::NoSuchVip(_) | LbError::NoSuchBackend { .. } => ApiError::not_found(msg),
        LbError::VipExists(_) | LbError::BackendExists { .. } => ApiError::conflict(msg),
        LbError::Maps(_) => ApiError::internal(msg),
        _ => ApiError::bad_request(msg),
    }
}

impl Daemon {
    fn plane(&self) -> Result<&Plane, ApiError> {
        self.plane.as_ref().ok_or_else(|| {
            ApiError::conflict(
                "this daemon runs no data plane (no daemon.iface: a cache-only gateway)",
            )
        })
    }

    /// The engine, for a change.
    pub fn lock(&self) -> Result<MutexGuard<'_, LoadBalancer>, ApiError> {
        self.plane()?.lb.lock().map_err(|_| {
            ApiError::internal("internal state poisoned by an earlier panic; restart the daemon")
        })
    }

    /// Writes the engine's state to the state file.
    pub fn persist(&self, lb: &LoadBalancer) -> Result<(), ApiError> {
        state::save(&self.cfg.daemon.state_file, &lb.snapshot()).map_err(|e| {
            error!(error = %e, "change applied but NOT persisted");
            ApiError::internal(format!("change applied but not persisted: {e}"))
        })
    }

    /// Applies `f` and persists the result if anything changed: also when `f`
    /// failed part-way (see [`commit`]).
    fn mutate(
        &self,
        f: impl FnOnce(&mut LoadBalancer) -> Result<(), LbError>,
    ) -> Result<Reply, ApiError> {
        let mut lb = self.lock()?;
        let before = lb.generation();
        let result = f(&mut lb).map_err(lb_error);
        let changed = lb.generation() != before;
        commit(changed, result, || self.persist(&lb)).map(|()| Reply::Done)
    }

    /// Counters of every VIP and backend, and of the cache.
    pub fn stats(&self) -> Result<StatsReply, ApiError> {
        let at_ms = now_ms();
        let cache = self.cache.as_ref().map(|c| c.stats());
        let Some(plane) = &self.plane else {
            return Ok(StatsReply {
                at_ms,
                global: Default::default(),
                vips: Vec::new(),
                cache,
                routes: self.route_stats(),
            });
        };
        let internal = |e: crate::dataplane::maps::MapsError| ApiError::internal(e.to_string());
        let g = plane.stats.global().map_err(internal)?;
        let global = Counter::ALL
            .iter()
            .map(|c| (c.name().to_string(), g.get(*c)))
            .collect();
        let view = plane.view.load();
        let unknown = self.unknown_telemetry();
        let mut vips = Vec::new();
        for v in &view.vips {
            let s = plane.stats.vip(v.index).map_err(internal)?;
            let mut backends = Vec::new();
            for b in &v.backends {
                let bs = plane.stats.backend(b.slot).map_err(internal)?;
                backends.push(BackendStatsRow {
                    addr: b.addr,
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    ring_slots: b.ring_slots,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    new_flows: bs.new_flows,
                    down: b.down.clone(),
                    telemetry_unknown: unknown.contains_key(&(v.spec.id, b.addr)),
                });
            }
            vips.push(VipStatsRow {
                vip: v.spec.id,
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                backends,
            });
        }
        Ok(StatsReply {
            at_ms,
            global,
            vips,
            cache,
            routes: self.route_stats(),
        })
    }

    /// Each serving route's counters.
    fn route_stats(&self) -> Vec<RouteStatsRow> {
        let Some(routes) = self.routes.get() else {
            return Vec::new();
        };
        routes
            .iter()
            .map(|r| {
                let t = r.tier_counts();
                let by_tier = |counts: [u64; 3]| {
                    Tier::ALL
                        .iter()
                        .zip(counts)
                        .map(|(t, n)| (t.label().to_string(), n))
                        .collect()
                };
                RouteStatsRow {
                    route: r.config().name.clone(),
                    requests_by_tier: by_tier(t.requests),
                    shed_by_tier: by_tier(t.shed),
                    stale_by_tier: by_tier(t.stale),
                    fallback_by_tier: by_tier(t.fallback),
                    queued_by_tier: by_tier(t.queued),
                    latency_by_tier: Tier::ALL
                        .iter()
                        .zip(r.latency())
                        .map(|(t, h)| (t.label().to_string(), h))
                        .collect(),
                    placements: r.placements(),
                    prediction_mape: r.prediction_error().map(|(_, m)| m),
                }
            })
            .collect()
    }

    /// Backends whose last scoring found no recognised signal, with the
    /// reason, from the control loop's last report (held only to copy it).
    fn unknown_telemetry(&self) -> BTreeMap<(VipId, IpAddr), String> {
        let Ok(w) = self.weights.lock() else {
            return BTreeMap::new();
        };
        w.pools
            .iter()
            .flat_map(|p| {
                p.decisions
                    .iter()
                    .filter(|d| d.unknown)
                    .map(|d| ((p.vip, d.addr), d.why.clone()))
            })
            .collect()
    }

    fn status(&self) -> StatusReply {
        let cache_routes: Vec<String> = self
            .cfg
            .cache_routes
            .iter()
            .map(|r| format!("{} {}", r.route.name, r.route.listen))
            .collect();
        let mut reply = StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            iface: None,
            netns: self.cfg.daemon.netns.clone(),
            pin_dir: String::new(),
            xdp_mode: None,
            adopted: false,
            uptime_secs: self.started.elapsed().as_secs(),
            ring_size: 0,
            flow_table: (0, 0),
            vips: 0,
            backends: 0,
            down: Vec::new(),
            unknown_telemetry: Vec::new(),
            cache_routes,
        };
        let Some(plane) = &self.plane else {
            return reply;
        };
        let view = plane.view.load();
        for v in &view.vips {
            for b in &v.backends {
                if let Some(reason) = &b.down {
                    reply.down.push(DownBackend {
                        vip: v.spec.id,
                        addr: b.addr,
                        reason: reason.clone(),
                    });
                }
            }
        }
        reply.unknown_telemetry = self
            .unknown_telemetry()
            .into_iter()
            .map(|((vip, addr), reason)| DownBackend { vip, addr, reason })
            .collect();
        let att = plane.programs.attachment();
        reply.iface = self.cfg.daemon.iface.clone();
        reply.pin_dir = self.cfg.daemon.pin_dir.display().to_string();
        reply.xdp_mode = att
            .and_then(|a| a.mode)
            .map(|m| format!("{m:?}").to_lowercase());
        reply.adopted = att.is_some_and(|a| a.adopted);
        reply.ring_size = plane.ring_size;
        reply.flow_table = (plane.flows.capacity(), plane.flows.occupancy().0);
        reply.vips = view.vips.len();
        reply.backends = view.vips.iter().map(|v| v.backends.len()).sum();
        reply
    }

    fn cache(&self) -> Result<&Arc<Cache>, ApiError> {
        self.cache.as_ref().ok_or_else(|| {
            ApiError::conflict(
                "this daemon runs no cache (no [[cache_route]] in its configuration)",
            )
        })
    }

    /// Runs a cache operation from the API's blocking thread.
    fn cache_op(
        &self,
        op: impl std::future::Future<Output = Result<InvalidateReply, CacheError>>,
    ) -> Result<Reply, ApiError> {
        tokio::runtime::Handle::current()
            .block_on(op)
            .map(Reply::Invalidated)
            .map_err(|e| match e {
                CacheError::BadKey(_) => ApiError::bad_request(e.to_string()),
                _ => ApiError::unavailable(e.to_string()),
            })
    }
}

/// The state file follows the model, whatever the change's outcome: a change
/// that altered the model and then failed (a removal whose slot cleanup hit a
/// map error after the backend left the ring) is persisted as the model now
/// holds it, so a restart restores what was running, not what was before.
/// The change's own error wins over a persist error.
fn commit<T>(
    changed: bool,
    result: Result<T, ApiError>,
    persist: impl FnOnce() -> Result<(), ApiError>,
) -> Result<T, ApiError> {
    let persisted = if changed { persist() } else { Ok(()) };
    let value = result?;
    persisted.map(|()| value)
}

impl Handler for Daemon {
    fn handle(&self, req: Request) -> Result<Reply, ApiError> {
        match req {
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Stats => self.stats().map(Reply::Stats),
            Request::Weights => Ok(Reply::Weights(
                self.weights
                    .lock()
                    .map(|w| w.clone())
                    .map_err(|_| ApiError::internal("weights report poisoned"))?,
            )),
            Request::ListVips => Ok(Reply::Vips(self.plane()?.view.load().vips.clone())),
            Request::AddVip(spec) => self.mutate(|lb| lb.add_vip(spec)),
            Request::RemoveVip(id) => self.mutate(|lb| lb.remove_vip(&id)),
            Request::AddBackend(vip, b) => self.mutate(|lb| {
                lb.add_backend(
                    &vip,
                    BackendSpec {
                        addr: b.addr,
                        weight: b.weight,
                        mac: b.mac,
                    },
                )
            }),
            Request::RemoveBackend(vip, addr) => self.mutate(|lb| lb.remove_backend(&vip, addr)),
            Request::Drain(vip, addr, true) => self.mutate(|lb| lb.drain(&vip, addr)),
            Request::Drain(vip, addr, false) => self.mutate(|lb| lb.undrain(&vip, addr)),
            Request::SetWeight(vip, addr, w) => self.mutate(|lb| lb.set_weight(&vip, addr, w)),
            Request::SetVip(vip, set) => self.mutate(|lb| {
                if let Some(t) = set.tier {
                    lb.set_tier(&vip, t)?;
                }
                if let Some(r) = set.refuse {
                    lb.set_refusal(&vip, r)?;
                }
                if let Some(p) = set.shed_percent {
                    lb.set_shed(&vip, crate::lb::shed::share_of_percent(p as f64))?;
                }
                Ok(())
            }),
            Request::CacheStats => Ok(Reply::Cache(self.cache()?.stats())),
            Request::CacheInvalidate(op) => {
                let c = self.cache()?.clone();
                self.cache_op(async move { c.invalidate(op).await })
            }
            Request::CacheBump(model) => {
                let c = self.cache()?.clone();
                self.cache_op(async move { c.bump_version(&model).await })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_change_that_fails_after_changing_the_model_is_persisted() {
        let saved = Cell::new(0);
        let persist = || {
            saved.set(saved.get() + 1);
            Ok(())
        };
        let e = commit::<()>(true, Err(ApiError::internal("slot cleanup")), persist);
        assert_eq!(e.unwrap_err().message, "slot cleanup");
        assert_eq!(saved.get(), 1, "the partial change reached the state file");
        // Nothing changed: nothing written, the error passes through.
        assert!(commit::<()>(false, Err(ApiError::internal("x")), persist).is_err());
        assert_eq!(saved.get(), 1);
        // A clean change whose persist fails reports the persist error.
        let e = commit(true, Ok(()), || Err(ApiError::internal("disk full")));
        assert_eq!(e.unwrap_err().message, "disk full");
    }
}
