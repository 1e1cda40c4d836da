//! The telemetry control loop: scrape every backend of every pool that has
//! telemetry, run health checks, learn which models each serves, score, and
//! hand the decisions to the load balancer.
//!
//! One tick scrapes all endpoints of all pools concurrently; a backend whose
//! endpoint is slow, huge or broken only fails its own scrape. A backend
//! without configured endpoints is weighted by its capacity hint alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    control::scoring::{Decision, Input, Scorer, ScoringPolicy},
    control::telemetry::{
        Reading, ServerKind, Signals,
        health::{Check, Hysteresis, probe},
        scrape::{ScrapeError, ScrapeLimits, Scraper},
    },
    lb::VipId,
};

/// How often a backend's `/v1/models` is polled.
const MODELS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct BackendRt {
    prev: Option<Reading>,
    cur: Option<Reading>,
    last_ok: Option<Instant>,
    scrape: Hysteresis,
    health: Hysteresis,
    scrape_error: Option<String>,
    health_error: Option<String>,
    api_models: Option<BTreeSet<String>>,
    models_at: Option<Instant>,
}

impl BackendRt {
    /// A backend first seen in a pool: up, with nothing read yet.
    fn new(cfg: &PoolTelemetry) -> Self {
        Self {
            prev: None,
            cur: None,
            last_ok: None,
            scrape: Hysteresis::new(cfg.fall, cfg.rise),
            health: Hysteresis::new(cfg.fall, cfg.rise),
            scrape_error: None,
            health_error: None,
            api_models: None,
            models_at: None,
        }
    }

    /// Takes in what one tick found. Every endpoint must answer: a
    /// half-read backend is not read.
    fn record(&mut self, job: &Job, found: Found, now: Instant) {
        if !job.endpoints.is_empty() {
            let mut merged: Option<Reading> = None;
            let mut err = None;
            for r in found.scrapes {
                match r {
                    Ok(reading) => match &mut merged {
                        Some(m) => m.merge(reading),
                        None => merged = Some(reading),
                    },
                    Err(e) => err = Some(e),
                }
            }
            let ok = err.is_none() && merged.is_some();
            if ok {
                self.prev = self.cur.take();
                self.cur = merged;
                self.last_ok = Some(now);
                self.scrape_error = None;
            } else {
                self.scrape_error = err;
            }
            let was = self.scrape.is_up();
            if self.scrape.record(ok) != was {
                if ok {
                    info!(vip = %job.vip, backend = %job.addr, "telemetry back");
                } else {
                    warn!(vip = %job.vip, backend = %job.addr, error = ?self.scrape_error, "telemetry lost: backend down");
                }
            }
        }
        if let Some(h) = found.health {
            let ok = h.is_ok();
            self.health_error = h.err();
            self.health.record(ok);
        }
        if let Some(m) = found.models {
            self.models_at = Some(now);
            if let Ok(m) = m {
                self.api_models = Some(m);
            }
        }
    }
}

/// What one tick fetches from one backend.
struct Job {
    vip: VipId,
    addr: IpAddr,
    endpoints: Vec<(ServerKind, String)>,
    /// Its `/v1/models`, when due for a poll.
    models_url: Option<String>,
    health: Option<Check>,
    limits: ScrapeLimits,
}

/// What a [`Job`] found.
struct Found {
    /// Per endpoint, in order.
    scrapes: Vec<Result<Reading, String>>,
    health: Option<Result<(), String>>,
    models: Option<Result<BTreeSet<String>, ScrapeError>>,
}

impl Job {
    /// Scrapes every endpoint, runs the health check and polls the models,
    /// all at once.
    async fn run(&self, scraper: &Scraper) -> Found {
        let scrapes = join_all(self.endpoints.iter().map(|(kind, url)| async move {
            scraper
                .scrape(url, *kind, &self.limits)
                .await
                .map_err(|e| format!("{url}: {e}"))
        }));
        let check = async {
            match &self.health {
                Some(c) => Some(probe(c, self.addr, self.limits.timeout, scraper).await),
                None => None,
            }
        };
        let models = async {
            match &self.models_url {
                Some(u) => Some(scraper.models(u, &self.limits).await),
                None => None,
            }
        };
        let (scrapes, health, models) = tokio::join!(scrapes, check, models);
        Found {
            scrapes,
            health,
            models,
        }
    }
}

#[derive(Debug)]
struct Pool {
    cfg: PoolTelemetry,
    /// When this pool is next scraped: each pool keeps its own interval.
    next_due: Instant,
    scorer: Scorer,
    backends: BTreeMap<IpAddr, BackendRt>,
    last: Vec<Decision>,
    warning: Option<String>,
}

/// Telemetry settings of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTelemetry {
    /// Scrape interval.
    pub interval: Duration,
    /// Scrape limits.
    pub limits: ScrapeLimits,
    /// Failed scrapes (or checks) in a row that take a backend down.
    pub fall: u32,
    /// Good ones in a row that bring it back.
    pub rise: u32,
    /// The VIP's model or adapter: backends without it get no weight.
    pub model: Option<String>,
    /// Active health check, if any.
    pub health: Option<Check>,
    /// Scoring policy.
    pub policy: ScoringPolicy,
    /// Per backend: where its telemetry is.
    pub backends: BTreeMap<IpAddr, BackendTelemetry>,
}

/// Where one backend's telemetry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTelemetry {
    /// Metrics endpoints, inference server first.
    pub endpoints: Vec<(ServerKind, String)>,
    /// Models it serves, from the configuration.
    pub models: Option<BTreeSet<String>>,
    /// Its OpenAI-compatible `/v1/models` URL, polled for its models.
    pub models_url: Option<String>,
}

/// One pool's latest decisions, as reported by `balancer weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    /// The VIP.
    pub vip: VipId,
    /// The pool's warning (failing open, all saturated), if any.
    pub warning: Option<String>,
    /// Per backend.
    pub decisions: Vec<Decision>,
}

/// The loop's state across ticks.
pub struct Autoweight {
    pools: BTreeMap<VipId, Pool>,
    scraper: Scraper,
    /// Duration of the last tick's scrape + score.
    pub last_cycle: Duration,
}

impl Autoweight {
    /// Loop state for the pools that have telemetry.
    pub fn new(cfg: &BTreeMap<VipId, PoolTelemetry>) -> Self {
        Self {
            pools: cfg
                .iter()
                .map(|(id, c)| {
                    (
                        *id,
                        Pool {
                            cfg: c.clone(),
                            next_due: Instant::now(),
                            scorer: Scorer::default(),
                            backends: BTreeMap::new(),
                            last: Vec::new(),
                            warning: None,
                        },
                    )
                })
                .collect(),
            scraper: Scraper::new(),
            last_cycle: Duration::ZERO,
        }
    }

    /// Whether any pool has telemetry.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// When the next pool falls due (`None` without pools).
    pub fn next_due(&self) -> Option<Instant> {
        self.pools.values().map(|p| p.next_due).min()
    }

    /// Latest decisions of every pool.
    pub fn report(&self) -> Vec<PoolReport> {
        self.pools
            .iter()
            .map(|(vip, p)| PoolReport {
                vip: *vip,
                warning: p.warning.clone(),
                decisions: p.last.clone(),
            })
            .collect()
    }

    /// One tick: scrapes and scores the pools that are due, each at its own
    /// interval. `members` is each VIP's pool now: (address, configured
    /// weight, used as capacity hint). Returns the decisions to apply, for
    /// the pools scraped.
    pub async fn tick(
        &mut self,
        members: &BTreeMap<VipId, Vec<(IpAddr, u32)>>,
    ) -> Vec<(VipId, Vec<Decision>)> {
        let t0 = Instant::now();
        let mut due = BTreeSet::new();
        for (vip, pool) in &mut self.pools {
            if pool.next_due <= t0 {
                // From the due time, not from now: a slow scrape does not
                // stretch the interval.
                let next = pool.next_due + pool.cfg.interval;
                // Fallen behind: start over from now rather than burst.
                pool.next_due = if next > t0 {
                    next
                } else {
                    t0 + pool.cfg.interval
                };
                due.insert(*vip);
            }
        }
        self.scrape(&due, members).await;
        let out = self.score(&due, members);
        self.last_cycle = t0.elapsed();
        out
    }

    /// One tick of every pool, due or not (benches measure whole cycles).
    pub async fn tick_all(
        &mut self,
        members: &BTreeMap<VipId, Vec<(IpAddr, u32)>>,
    ) -> Vec<(VipId, Vec<Decision>)> {
        let now = Instant::now();
        for p in self.pools.values_mut() {
            p.next_due = now;
        }
        self.tick(members).await
    }

    /// Every scrape, health check and model poll of the due pools, at once.
    async fn scrape(
        &mut self,
        due: &BTreeSet<VipId>,
        members: &BTreeMap<VipId, Vec<(IpAddr, u32)>>,
    ) {
        let jobs = self.jobs(due, members);
        let scraper = &self.scraper;
        let results = join_all(jobs.iter().map(|j| j.run(scraper))).await;
        let now = Instant::now();
        for (job, found) in jobs.into_iter().zip(results) {
            let Some(pool) = self.pools.get_mut(&job.vip) else {
                continue;
            };
            if let Some(rt) = pool.backends.get_mut(&job.addr) {
                rt.record(&job, found, now);
            }
        }
    }

    /// What to fetch from each backend of the due pools, after dropping the
    /// state of backends that left their pool.
    fn jobs(
        &mut self,
        due: &BTreeSet<VipId>,
        members: &BTreeMap<VipId, Vec<(IpAddr, u32)>>,
    ) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (vip, pool) in &mut self.pools {
            let Some(m) = members.get(vip).filter(|_| due.contains(vip)) else {
                continue;
            };
            pool.backends.retain(|a, _| m.iter().any(|(x, _)| x == a));
            for (addr, _) in m {
                let rt = pool
                    .backends
                    .entry(*addr)
                    .or_insert_with(|| BackendRt::new(&pool.cfg));
                let bt = pool.cfg.backends.get(addr);
                jobs.push(Job {
                    vip: *vip,
                    addr: *addr,
                    endpoints: bt.map(|b| b.endpoints.clone()).unwrap_or_default(),
                    models_url: bt
                        .and_then(|b| b.models_url.clone())
                        .filter(|_| rt.models_at.is_none_or(|t| t.elapsed() >= MODELS_EVERY)),
                    health: pool.cfg.health.clone(),
                    limits: pool.cfg.limits,
                });
            }
        }
        jobs
    }

    /// Scores the due pools from their latest readings.
    fn score(
        &mut self,
        due: &BTreeSet<VipId>,
        members: &BTreeMap<VipId, Vec<(IpAddr, u32)>>,
    ) -> Vec<(VipId, Vec<Decision>)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (vip, pool) in &mut self.pools {
            let Some(m) = members.get(vip).filter(|_| due.contains(vip)) else {
                continue;
            };
            let inputs: Vec<Input> = m
                .iter()
                .filter_map(|(addr, hint)| {
                    let rt = pool.backends.get(addr)?;
                    let bt = pool.cfg.backends.get(addr);
                    let no_endpoints = bt.is_none_or(|b| b.endpoints.is_empty());
                    let down = if !rt.scrape.is_up() {
                        Some(format!(
                            "{} failed scrapes in a row: {}",
                            pool.cfg.fall,
                            rt.scrape_error.clone().unwrap_or_default()
                        ))
                    } else if !rt.health.is_up() {
                        Some(format!(
                            "health check: {}",
                            rt.health_error.clone().unwrap_or_default()
                        ))
                    } else {
                        None
                    };
                    let has_model = pool.cfg.model.as_ref().and_then(|model| {
                        let sources = [
                            bt.and_then(|b| b.models.as_ref()),
                            rt.api_models.as_ref(),
                            rt.cur.as_ref().and_then(|r| r.models.as_ref()),
                        ];
                        let known: Vec<_> = sources.into_iter().flatten().collect();
                        (!known.is_empty()).then(|| known.iter().any(|s| s.contains(model)))
                    });
                    Some(Input {
                        addr: *addr,
                        hint: *hint as f64,
                        signals: rt
                            .cur
                            .as_ref()
                            .map(|c| Signals::derive(rt.prev.as_ref(), c)),
                        // Without endpoints there is nothing to be stale.
                        last_ok: if no_endpoints { Some(now) } else { rt.last_ok },
                        down,
                        has_model,
                        unknown: unknown_why(rt, bt),
                    })
                })
                .collect();
            let (decisions, warning) = pool.scorer.score(&pool.cfg.policy, &inputs, now);
            if warning.is_some() && warning != pool.warning {
                warn!(vip = %vip, "{}", warning.clone().unwrap_or_default());
            }
            pool.warning = warning;
            pool.last = decisions.clone();
            out.push((*vip, decisions));
        }
        out
    }
}

/// `no recognised signal (kind vllm)` when the backend's last good scrape
/// held no metric its endpoints' kinds are known by.
fn unknown_why(rt: &BackendRt, bt: Option<&BackendTelemetry>) -> Option<String> {
    if rt.cur.as_ref()?.has_signal() {
        return None;
    }
    let kinds: Vec<String> = bt
        .map(|b| {
            b.endpoints
                .iter()
                .map(|(k, _)| k.name().to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(format!("no recognised signal (kind {})", kinds.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ms: u64) -> PoolTelemetry {
        PoolTelemetry {
            interval: Duration::from_millis(ms),
            limits: ScrapeLimits::default(),
            fall: 2,
            rise: 2,
            model: None,
            health: None,
            policy: ScoringPolicy::default(),
            backends: BTreeMap::new(),
        }
    }

    /// Each pool is scraped at its own interval, not at the shortest one.
    #[tokio::test]
    async fn every_pool_keeps_its_own_interval() {
        let fast: VipId = "10.0.0.1:80".parse().unwrap();
        let slow: VipId = "10.0.0.2:80".parse().unwrap();
        let cfg = BTreeMap::from([(fast, pool(1)), (slow, pool(3_600_000))]);
        let members = BTreeMap::from([
            (fast, vec![("10.0.1.1".parse().unwrap(), 1)]),
            (slow, vec![("10.0.1.2".parse().unwrap(), 1)]),
        ]);
        let mut auto = Autoweight::new(&cfg);
        let vips =
            |d: Vec<(VipId, Vec<Decision>)>| d.into_iter().map(|(v, _)| v).collect::<Vec<_>>();
        assert_eq!(
            vips(auto.tick(&members).await),
            vec![fast, slow],
            "both due at start"
        );
        for _ in 0..3 {
            let due = auto.next_due().unwrap();
            tokio::time::sleep_until(due.into()).await;
            assert_eq!(
                vips(auto.tick(&members).await),
                vec![fast],
                "only the fast pool"
            );
        }
        assert!(auto.next_due().unwrap() < Instant::now() + Duration::from_secs(60));
        assert_eq!(vips(auto.tick_all(&members).await), vec![fast, slow]);
    }
}

#[cfg(test)]
mod unknown_tests {
    use super::*;
    use crate::control::{prom, telemetry::presets};

    /// An empty `/metrics` and a server of another kind both read as "no
    /// recognised signal", named by kind; a real reading does not.
    #[test]
    fn empty_or_wrong_kind_is_unknown() {
        let bt = BackendTelemetry {
            endpoints: vec![(ServerKind::Vllm, "http://x/metrics".into())],
            models: None,
            models_url: None,
        };
        let mut rt = BackendRt::new(&PoolTelemetry {
            interval: Duration::from_secs(1),
            limits: ScrapeLimits::default(),
            fall: 2,
            rise: 2,
            model: None,
            health: None,
            policy: ScoringPolicy::default(),
            backends: BTreeMap::new(),
        });
        let read = |body: &str| {
            let e = prom::parse(body, &prom::Limits::default()).unwrap();
            presets::extract(ServerKind::Vllm, &e)
        };
        for body in ["", "nv_inference_pending_request_count{model=\"m\"} 3\n"] {
            rt.cur = Some(read(body));
            assert_eq!(
                unknown_why(&rt, Some(&bt)).as_deref(),
                Some("no recognised signal (kind vllm)"),
                "{body:?}"
            );
        }
        rt.cur = Some(read("vllm:num_requests_waiting 0\n"));
        assert_eq!(unknown_why(&rt, Some(&bt)), None);
    }
}
