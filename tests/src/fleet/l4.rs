//! The L4 strategies: the fleet in a testbed, each node a `balancer emulate`
//! process in its own backend namespace, and the daemon's XDP program on the
//! gateway in front of them, steering each connection to a node through the
//! VIP (Maglev, IPIP, direct server return).
//!
//! Both strategies give every node the same configured weight, since the
//! daemon is not told the nodes' classes: `Static` keeps those weights, and
//! `Telemetry` lets the daemon's autoweight turn each node's vLLM metrics
//! into weights, as a user enabling `[vip.telemetry]` gets.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use balancer::emulate::{engine::Counters, node::Gauges};

use super::scenario::Scenario;
use crate::{
    netns,
    testbed::{self, Spec, Testbed, VIP, VIP_PORT},
};

/// How the daemon weights the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Equal configured weights, never changed.
    Static,
    /// Weights from each node's vLLM `/metrics` (autoweight).
    Telemetry,
}

/// Client namespaces the requests are sent from, in turn.
pub const CLIENTS: usize = 2;

/// A running L4 fleet.
pub struct L4Fleet {
    tb: Testbed,
    /// Per node, in testbed order: name and class.
    pub nodes: Vec<(String, String)>,
}

/// Starts the fleet of `s` in a new testbed behind a daemon weighting it
/// by `weights`. Blocking; needs root.
pub fn start(s: &Scenario, weights: Weights) -> Result<L4Fleet> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the L4 strategies need root: they build network namespaces and load XDP programs");
    }
    let profile = s
        .fleet
        .profile_path
        .as_deref()
        .context("the L4 strategies run `balancer emulate`, which needs the profile's file")?;
    let bin = testbed::balancer_bin()?;
    let mut nodes = Vec::new();
    let mut commands = Vec::new();
    for (class, count) in &s.fleet.nodes {
        for i in 0..*count {
            let name = format!("{class}-{}", i + 1);
            commands.push(emulate_command(&bin, profile, class, &name, s));
            nodes.push((name, class.clone()));
        }
    }
    let mut spec = Spec::unique(CLIENTS, nodes.len(), &bin);
    spec.backend_commands = Some(commands);
    let mut tb = Testbed::up(spec)?;
    let cfg = tb.config(&vip_toml(&tb, weights, &s.fleet.model));
    tb.start_daemon(&cfg)?;
    Ok(L4Fleet { tb, nodes })
}

fn emulate_command(
    bin: &Path,
    profile: &Path,
    class: &str,
    name: &str,
    s: &Scenario,
) -> Vec<String> {
    let listen = format!("0.0.0.0:{VIP_PORT}");
    let models: Vec<&str> = s.workload.mix.iter().map(|m| m.model.as_str()).collect();
    let models = models.join(",");
    [
        &bin.to_string_lossy() as &str,
        "emulate",
        "--profile",
        &profile.to_string_lossy(),
        "--class",
        class,
        "--listen",
        &listen,
        "--name",
        name,
        "--model",
        &s.fleet.model,
        "--models",
        &models,
    ]
    .map(String::from)
    .to_vec()
}

/// The VIP with every node at weight 1; with telemetry, scraped every
/// 500 ms and without slow start (the fleet is up before the run starts).
fn vip_toml(tb: &Testbed, weights: Weights, model: &str) -> String {
    let mut v = format!("[[vip]]\nvip = \"{VIP}:{VIP_PORT}/tcp\"\n");
    if weights == Weights::Telemetry {
        v.push_str(&format!(
            "\n[vip.telemetry]\ninterval_ms = 500\nmodel = \"{model}\"\n\n[vip.telemetry.policy]\nslow_start_s = 0\n"
        ));
    }
    for b in &tb.backends {
        v.push_str(&format!(
            "\n[[vip.backend]]\naddress = \"{}\"\nweight = 1\n",
            b.addr
        ));
        if weights == Weights::Telemetry {
            v.push_str(&format!(
                "metrics = [{{ kind = \"vllm\", url = \"http://{}:{VIP_PORT}/metrics\" }}]\n",
                b.addr
            ));
        }
    }
    v
}

impl L4Fleet {
    /// Where clients send: the VIP.
    pub fn target(&self) -> SocketAddr {
        self.tb.vip()
    }

    /// Waits until every node has loaded its models (see [`wait_ready`]).
    pub fn wait_ready(&self, limit: Duration) -> Result<()> {
        let addrs: Vec<SocketAddr> = self
            .tb
            .backends
            .iter()
            .map(|b| SocketAddr::from((b.addr, VIP_PORT)))
            .collect();
        netns::run_in(&self.tb.gateway.ns, move || wait_ready(&addrs, limit))?
    }

    /// The client namespaces.
    pub fn client_namespaces(&self) -> Vec<String> {
        self.tb.clients.iter().map(|c| c.ns.clone()).collect()
    }

    /// Each node's gauges, read from its `/metrics` (from the gateway's
    /// namespace, straight to the node's own address).
    pub fn gauges(&self) -> Result<Vec<(String, String, Gauges)>> {
        let mut out = Vec::new();
        for ((name, class), b) in self.nodes.iter().zip(&self.tb.backends) {
            let addr = SocketAddr::from((b.addr, VIP_PORT));
            let text = netns::run_in(&self.tb.gateway.ns, move || scrape(addr))?
                .with_context(|| format!("reading {name}'s /metrics"))?;
            out.push((name.clone(), class.clone(), parse_gauges(&text)));
        }
        Ok(out)
    }
}

/// `GET /metrics`.
fn scrape(addr: SocketAddr) -> Result<String> {
    get(addr, "/metrics")
}

/// `GET path` over a plain socket, with deadlines and a 4 MiB cap; an
/// answer other than 200 is an error.
pub(super) fn get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let t = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.take(4 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        bail!("{}", text.lines().next().unwrap_or("no answer"));
    }
    Ok(text)
}

/// Waits until every node in `addrs` says it is ready (KServe's
/// `/v2/health/ready`: every model loaded), within `limit`.
pub(super) fn wait_ready(addrs: &[SocketAddr], limit: Duration) -> Result<()> {
    let end = std::time::Instant::now() + limit;
    for a in addrs {
        loop {
            match get(*a, "/v2/health/ready") {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() >= end => {
                    bail!("node {a} was not ready within {limit:?}: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

/// The emulator's metrics back into gauges (unknown lines are skipped).
pub fn parse_gauges(text: &str) -> Gauges {
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, v) = l.rsplit_once(' ')?;
                let base = key.split('{').next()?;
                (base == name).then(|| v.trim().parse::<f64>().ok())?
            })
            .unwrap_or(0.0)
    };
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter_map(|l| {
                let (key, v) = l.rsplit_once(' ')?;
                (key.split('{').next()? == name).then(|| v.trim().parse::<f64>().ok())?
            })
            .sum()
    };
    Gauges {
        waiting: value("vllm:num_requests_waiting") as usize,
        running: value("vllm:num_requests_running") as usize,
        kv_usage: value("vllm:kv_cache_usage_perc"),
        counters: Counters {
            prompt_tokens: value("vllm:prompt_tokens_total") as u64,
            generation_tokens: value("vllm:generation_tokens_total") as u64,
            finished: value("vllm:request_success_total") as u64,
            preemptions: value("vllm:num_preemptions_total") as u64,
        },
        prefix_queries: value("vllm:prefix_cache_queries_total") as u64,
        prefix_hits: value("vllm:prefix_cache_hits_total") as u64,
        // The node's device time: the LLM engine's and every other
        // model's (one line each).
        busy_secs: value("emulator_busy_seconds_total") + sum("emulator_model_busy_seconds_total"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_come_back_from_the_emulators_metrics() {
        let text = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:num_requests_running{model_name=\"m\"} 7\nvllm:prefix_cache_hits_total{model_name=\"m\"} 128\nvllm:prefix_cache_queries_total{model_name=\"m\"} 512\nemulator_busy_seconds_total{model_name=\"m\"} 12.5\nemulator_model_busy_seconds_total{model_name=\"a\"} 1.5\nemulator_model_busy_seconds_total{model_name=\"b\"} 2\nvllm:num_preemptions_total{model_name=\"m\"} 2\ngarbage line\n";
        let g = parse_gauges(text);
        assert_eq!((g.waiting, g.running), (3, 7));
        assert_eq!((g.prefix_hits, g.prefix_queries), (128, 512));
        assert_eq!(g.busy_secs, 16.0);
        assert_eq!(g.counters.preemptions, 2);
        assert_eq!(g.counters.finished, 0);
    }
}
