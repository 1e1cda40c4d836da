//! `balancer run`: the gateway daemon.
//!
//! Start-up order, so a bad configuration changes nothing and a restart never
//! drops traffic:
//!
//! 1. validate the configuration (refuse on errors);
//! 2. take the daemon lock (see [`lock`]): a daemon already running with this
//!    state file or socket stops us here, before anything is touched;
//! 3. read the state file (refuse on errors) and enter the configured network
//!    namespace;
//! 4. bind every listener (cache routes, admin socket, metrics): a port in use
//!    stops us before the kernel is touched;
//! 5. attach the data plane, or adopt the one pinned by an earlier daemon;
//! 6. rebuild the model from the state file (or the configuration's VIPs on a
//!    first start) and reconcile the maps with it; an adopted, consistent data
//!    plane is left exactly as it was;
//! 7. serve the admin API, the metrics endpoint, and resolve next hops.
//!
//! Every change is persisted to the state file before it is acknowledged.
//! Stopping the daemon leaves the data plane running; `balancer detach`
//! removes it.

#[cfg(test)]
mod dashboard_tests;
mod handlers;
pub mod lock;
mod loops;
pub mod metrics;
mod socket;
pub mod state;

pub use handlers::{Daemon, Plane};

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::{
    api::{WeightsReply, server},
    cache::{
        Cache,
        proxy::{PoolSource, Route},
    },
    config::{CachePool, Config},
    dataplane::{Dataplane, Programs},
    lb::{LoadBalancer, Snapshot},
};

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<()> {
    for w in &cfg.warnings {
        warn!("{w}");
    }
    // Before anything else: a second daemon must not adopt the first one's
    // maps or take over its socket. Held until we return.
    let pins = cfg
        .daemon
        .iface
        .as_ref()
        .map(|_| lock::pin_lock_path(&cfg.daemon.pin_dir));
    let _lock =
        lock::DaemonLock::acquire(&cfg.daemon.state_file, &cfg.daemon.socket, pins.as_deref())?;
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
    let metrics_listener = match cfg.daemon.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?,
        ),
        None => None,
    };
    let admin = socket::bind(&cfg.daemon.socket)
        .with_context(|| format!("binding {}", cfg.daemon.socket.display()))?;
    let plane = match &cfg.daemon.iface {
        Some(iface) => match attach(&cfg, iface, saved).await {
            Ok((lb, programs)) => Some(Plane::new(lb, programs)),
            Err(e) => {
                // Nothing may be left that looks like a live daemon.
                let _ = std::fs::remove_file(&cfg.daemon.socket);
                return Err(e);
            }
        },
        None => {
            info!(
                routes = cfg.cache_routes.len(),
                "cache-only gateway: no data plane"
            );
            None
        }
    };
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        plane,
        cache: cache.clone(),
        started: Instant::now(),
        weights: Mutex::new(WeightsReply {
            cycle_ms: 0.0,
            apply_ms: 0.0,
            pools: Vec::new(),
        }),
        routes: OnceLock::new(),
    });
    if let Some(c) = &cache {
        tokio::spawn(c.clone().run_l2());
        let mut routes = Vec::new();
        for (r, l) in cfg.cache_routes.iter().zip(listeners) {
            let route = Route::new(r.route.clone(), c.clone(), pool_source(&daemon, &r.pool));
            if let Some(p) = &r.fallback_pool {
                route.set_fallback(pool_source(&daemon, p));
            }
            info!(route = %r.route.name, listen = %r.route.listen, cache = r.route.cache, "route serving");
            tokio::spawn(route.clone().serve(l));
            routes.push(route);
        }
        let _ = daemon.routes.set(routes);
    }

    tokio::spawn(server::serve(admin, daemon.clone()));
    if let Some(l) = metrics_listener {
        let src = daemon.clone();
        tokio::spawn(metrics::serve(
            l,
            Arc::new(move || src.stats().map_err(|e| e.message)),
        ));
    }

    if daemon.plane.is_some() {
        tokio::spawn(loops::resolve(daemon.clone()));
    }
    let auto = crate::control::autoweight::Autoweight::new(&cfg.telemetry);
    if daemon.plane.is_some() && !auto.is_empty() {
        tokio::spawn(loops::telemetry(daemon.clone(), auto));
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
            let Some(plane) = &daemon.plane else {
                return Arc::new(Vec::new);
            };
            // The published view: a route never waits for the engine.
            let (view, vip, port) = (plane.view.clone(), *vip, *port);
            Arc::new(move || {
                view.load()
                    .serving(&vip)
                    .into_iter()
                    .map(|(addr, w)| (std::net::SocketAddr::new(addr, port), w))
                    .collect()
            })
        }
    }
}
