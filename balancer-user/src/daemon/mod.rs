//! `balancer run`: the gateway daemon.
//!
//! Start-up order, so a bad configuration changes nothing and a restart never
//! drops traffic:
//!
//! 1. validate the configuration and read the state file (refuse on errors);
//! 2. enter the configured network namespace;
//! 3. attach the data plane, or adopt the one pinned by an earlier daemon;
//! 4. rebuild the model from the state file (or the configuration's VIPs on a
//!    first start) and reconcile the maps with it; an adopted, consistent data
//!    plane is left exactly as it was;
//! 5. serve the admin API, the metrics endpoint, and resolve next hops.
//!
//! Every change is persisted to the state file before it is acknowledged.
//! Stopping the daemon leaves the data plane running; `balancer detach`
//! removes it.

pub mod metrics;
pub mod state;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use balancer_common::Counter;
use tracing::{error, info, warn};

use crate::{
    api::{
        ApiError, BackendStatsRow, DownBackend, Reply, Request, StatsReply, StatusReply,
        VipStatsRow, WeightsReply,
        server::{self, Handler},
    },
    cache::{
        Cache, CacheError, InvalidateReply,
        proxy::{PoolSource, Route},
    },
    config::CachePool,
    config::Config,
    control::neigh,
    dataplane::{Dataplane, Programs},
    lb::{BackendSpec, LbError, LoadBalancer, Snapshot},
};

/// Shared daemon state.
pub struct Daemon {
    cfg: Config,
    /// `None` on a cache-only gateway (no `daemon.iface`).
    lb: Option<Mutex<LoadBalancer>>,
    programs: Option<Programs>,
    cache: Option<Arc<Cache>>,
    started: Instant,
    weights: Mutex<WeightsReply>,
}

fn lb_error(e: LbError) -> ApiError {
    let status = match &e {
        LbError::NoSuchVip(_) | LbError::NoSuchBackend { .. } => 404,
        LbError::VipExists(_) | LbError::BackendExists { .. } => 409,
        LbError::Maps(_) => 500,
        _ => 400,
    };
    ApiError {
        status,
        message: e.to_string(),
    }
}

impl Daemon {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LoadBalancer>, ApiError> {
        let Some(lb) = &self.lb else {
            return Err(ApiError {
                status: 409,
                message: "this daemon runs no data plane (no daemon.iface: a cache-only gateway)"
                    .into(),
            });
        };
        lb.lock().map_err(|_| ApiError {
            status: 500,
            message: "internal state poisoned by an earlier panic; restart the daemon".into(),
        })
    }

    fn persist(&self, lb: &LoadBalancer) -> Result<(), ApiError> {
        state::save(&self.cfg.daemon.state_file, &lb.snapshot()).map_err(|e| {
            error!(error = %e, "change applied but NOT persisted");
            ApiError {
                status: 500,
                message: format!("change applied but not persisted: {e}"),
            }
        })
    }

    /// Applies `f` and persists the result.
    fn mutate(
        &self,
        f: impl FnOnce(&mut LoadBalancer) -> Result<(), LbError>,
    ) -> Result<Reply, ApiError> {
        let mut lb = self.lock()?;
        f(&mut lb).map_err(lb_error)?;
        self.persist(&lb)?;
        Ok(Reply::Done)
    }

    /// Counters of every VIP and backend, and of the cache.
    pub fn stats(&self) -> Result<StatsReply, ApiError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let cache = self.cache.as_ref().map(|c| c.stats());
        if self.lb.is_none() {
            return Ok(StatsReply {
                at_ms,
                global: Default::default(),
                vips: Vec::new(),
                cache,
            });
        }
        let lb = self.lock()?;
        let internal = |e: LbError| ApiError {
            status: 500,
            message: e.to_string(),
        };
        let g = lb.global_stats().map_err(internal)?;
        let global = Counter::ALL
            .iter()
            .map(|c| (c.name().to_string(), g.get(*c)))
            .collect();
        let mut vips = Vec::new();
        for v in lb.vips() {
            let s = lb.vip_stats(&v.spec.id).map_err(internal)?;
            let mut backends = Vec::new();
            for b in &v.backends {
                let bs = lb.backend_stats(&v.spec.id, b.addr).map_err(internal)?;
                backends.push(BackendStatsRow {
                    addr: b.addr,
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    ring_slots: b.ring_slots,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    new_flows: bs.new_flows,
                    down: b.down.clone(),
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
        })
    }

    fn status(&self) -> Result<StatusReply, ApiError> {
        let cache_routes: Vec<String> = self
            .cfg
            .cache_routes
            .iter()
            .map(|r| format!("{} {}", r.route.name, r.route.listen))
            .collect();
        if self.lb.is_none() {
            return Ok(StatusReply {
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
                cache_routes,
            });
        }
        let lb = self.lock()?;
        let vips = lb.vips();
        let mut down = Vec::new();
        for v in &vips {
            for b in &v.backends {
                if let Some(reason) = &b.down {
                    down.push(DownBackend {
                        vip: v.spec.id,
                        addr: b.addr,
                        reason: reason.clone(),
                    });
                }
            }
        }
        let att = self.programs.as_ref().and_then(|p| p.attachment());
        let maps = lb.maps();
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            iface: self.cfg.daemon.iface.clone(),
            netns: self.cfg.daemon.netns.clone(),
            pin_dir: self.cfg.daemon.pin_dir.display().to_string(),
            xdp_mode: att
                .and_then(|a| a.mode)
                .map(|m| format!("{m:?}").to_lowercase()),
            adopted: att.is_some_and(|a| a.adopted),
            uptime_secs: self.started.elapsed().as_secs(),
            ring_size: maps.sizes.ring_size,
            flow_table: (maps.flows.capacity(), maps.flows.occupancy().0),
            vips: vips.len(),
            backends: vips.iter().map(|v| v.backends.len()).sum(),
            down,
            cache_routes,
        })
    }

    fn cache(&self) -> Result<&Arc<Cache>, ApiError> {
        self.cache.as_ref().ok_or_else(|| ApiError {
            status: 409,
            message: "this daemon runs no cache (no [[cache_route]] in its configuration)".into(),
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
            .map_err(|e| ApiError {
                status: match e {
                    CacheError::BadKey(_) => 400,
                    _ => 503,
                },
                message: e.to_string(),
            })
    }
}

impl Handler for Daemon {
    fn handle(&self, req: Request) -> Result<Reply, ApiError> {
        match req {
            Request::Status => self.status().map(Reply::Status),
            Request::Stats => self.stats().map(Reply::Stats),
            Request::Weights => Ok(Reply::Weights(
                self.weights
                    .lock()
                    .map(|w| w.clone())
                    .map_err(|_| ApiError {
                        status: 500,
                        message: "weights report poisoned".into(),
                    })?,
            )),
            Request::ListVips => Ok(Reply::Vips(self.lock()?.vips())),
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

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<()> {
    // Read the state file first: a broken one must stop us before the kernel
    // is touched.
    let saved = state::load(&cfg.daemon.state_file)?;
    if let Some(ns) = &cfg.daemon.netns {
        // Before the runtime exists: its threads inherit the namespace.
        enter_netns(ns)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(cfg, saved))
}

fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f =
        std::fs::File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {ns}"))?;
    Ok(())
}

async fn run_async(cfg: Config, saved: Option<Snapshot>) -> Result<()> {
    // The cache's listeners first: a port in use must stop us before the
    // kernel is touched.
    let cache = if cfg.cache_routes.is_empty() {
        None
    } else {
        Some(Cache::new(cfg.cache.clone()).context("setting up the cache")?)
    };
    let mut listeners = Vec::new();
    for r in &cfg.cache_routes {
        listeners.push(crate::cache::proxy::bind(&r.route).await?);
    }
    let (lb, programs) = match &cfg.daemon.iface {
        Some(iface) => {
            let (lb, programs) = attach(&cfg, iface, saved).await?;
            (Some(Mutex::new(lb)), Some(programs))
        }
        None => {
            info!(
                routes = cfg.cache_routes.len(),
                "cache-only gateway: no data plane"
            );
            (None, None)
        }
    };
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        lb,
        programs,
        cache: cache.clone(),
        started: Instant::now(),
        weights: Mutex::new(WeightsReply {
            cycle_ms: 0.0,
            apply_ms: 0.0,
            pools: Vec::new(),
        }),
    });
    if let Some(c) = &cache {
        tokio::spawn(c.clone().run_l2());
        for (r, l) in cfg.cache_routes.iter().zip(listeners) {
            let route = Route::new(r.route.clone(), c.clone(), pool_source(&daemon, &r.pool));
            info!(route = %r.route.name, listen = %r.route.listen, "cache route serving");
            tokio::spawn(route.serve(l));
        }
    }

    let listener = server::bind(&cfg.daemon.socket)
        .with_context(|| format!("binding {}", cfg.daemon.socket.display()))?;
    tokio::spawn(server::serve(listener, daemon.clone()));

    if let Some(addr) = cfg.daemon.metrics {
        let l = metrics::bind(addr)
            .await
            .with_context(|| format!("binding metrics on {addr}"))?;
        let src = daemon.clone();
        tokio::spawn(metrics::serve(
            l,
            Arc::new(move || src.stats().map_err(|e| e.message)),
        ));
    }

    if daemon.lb.is_some() {
        tokio::spawn(resolve_loop(daemon.clone()));
    }
    let auto = crate::control::autoweight::Autoweight::new(&cfg.telemetry);
    if daemon.lb.is_some() && !auto.is_empty() {
        tokio::spawn(telemetry_loop(daemon.clone(), auto));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("stopping; the data plane stays attached (`balancer detach` removes it)");
    let _ = std::fs::remove_file(&cfg.daemon.socket);
    Ok(())
}

/// Attaches (or adopts) the data plane and restores the VIPs.
async fn attach(
    cfg: &Config,
    iface: &str,
    saved: Option<Snapshot>,
) -> Result<(LoadBalancer, Programs)> {
    let d = cfg.daemon.clone();
    let load = cfg.load;
    let name = iface.to_string();
    let dp = tokio::task::spawn_blocking(move || {
        Dataplane::attach(&name, d.xdp_mode, &load, &d.pin_dir)
    })
    .await?
    .with_context(|| format!("attaching to {iface}"))?;
    let adopted = dp.programs.attachment().is_some_and(|a| a.adopted);
    let snapshot = saved.unwrap_or_else(|| cfg.initial.clone());
    let lb = match LoadBalancer::restore(dp.maps, &snapshot, adopted) {
        Ok(lb) => lb,
        Err(e) => {
            if !adopted {
                // We attached it just now: leave nothing behind.
                drop(dp.programs);
                let _ = Dataplane::detach(&cfg.daemon.pin_dir);
            }
            return Err(e).context("applying the saved state");
        }
    };
    state::save(&cfg.daemon.state_file, &lb.snapshot())?;
    info!(iface, adopted, vips = lb.vips().len(), "balancer running");
    Ok((lb, dp.programs))
}

/// A cache route's backends: a fixed list, or a VIP's live pool with the
/// control plane's current weights (drained and down backends excluded).
fn pool_source(daemon: &Arc<Daemon>, pool: &CachePool) -> PoolSource {
    match pool {
        CachePool::Static(addrs) => {
            let list: Vec<(std::net::SocketAddr, u32)> = addrs.iter().map(|a| (*a, 1)).collect();
            Arc::new(move || list.clone())
        }
        CachePool::Vip { vip, port } => {
            let (d, vip, port) = (Arc::downgrade(daemon), *vip, *port);
            Arc::new(move || {
                let Some(d) = d.upgrade() else {
                    return Vec::new();
                };
                let Ok(lb) = d.lock() else {
                    return Vec::new();
                };
                lb.vips()
                    .into_iter()
                    .find(|v| v.spec.id == vip)
                    .map(|v| {
                        v.backends
                            .iter()
                            .filter(|b| b.down.is_none() && !b.drained)
                            .map(|b| (std::net::SocketAddr::new(b.addr, port), b.effective_weight))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        }
    }
}

/// Scrapes, scores and applies telemetry-driven weights every interval.
async fn telemetry_loop(daemon: Arc<Daemon>, mut auto: crate::control::autoweight::Autoweight) {
    let mut tick = tokio::time::interval(auto.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members = match daemon.lock() {
            Ok(lb) => lb.pools(),
            Err(_) => return,
        };
        let decisions = auto.tick(&members).await;
        let d = daemon.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let Ok(mut lb) = d.lock() else {
                return Duration::ZERO;
            };
            let before = lb.snapshot();
            for (vip, ds) in decisions {
                let items: Vec<_> = ds
                    .iter()
                    .map(|x| (x.addr, x.weight, x.down.clone()))
                    .collect();
                if let Err(e) = lb.apply_auto_weights(&vip, &items) {
                    warn!(%vip, error = %e, "applying telemetry weights");
                }
            }
            if lb.snapshot() != before {
                let _ = d.persist(&lb);
            }
            t0.elapsed()
        })
        .await
        .unwrap_or_default();
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
async fn resolve_loop(daemon: Arc<Daemon>) {
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
        let d = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut lb) = d.lock() else { return };
            let before = lb.snapshot();
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
            if lb.snapshot() != before {
                let _ = d.persist(&lb);
            }
        })
        .await;
    }
}
