//! The fleet bench: real LLM traffic replayed open-loop on a fleet of
//! emulated inference nodes (`balancer emulate`'s engine model), through
//! each balancing strategy in turn.
//!
//! - [`scenario`]: the scenario file (fleet, workload, shape, tiers);
//! - [`workload`]: the request traces (Azure, Mooncake);
//! - [`shape`]: compressing a trace into the run and shaping its rate to a
//!   peak-to-average ratio;
//! - [`plan`]: the requests every strategy gets, prompts included;
//! - [`request`]: a planned request on the wire (LLM, KServe v2, speech);
//! - [`run`]: one strategy's run on a fresh fleet;
//! - [`l4`]: the L4 strategies' fleet: a testbed behind the daemon's XDP;
//! - [`report`]: the figures, the table and the JSON;
//! - [`plot`]: the PNG plots (latency over time, per-node load);
//! - [`check`]: runs with known answers (Erlang C, Pollaczek-Khinchine);
//! - [`gateway`]: a fleet in this process behind `balancer run`, for the
//!   routing tests.

pub mod check;
pub mod gateway;
pub mod l4;
pub mod plan;
pub mod plot;
pub mod report;
pub mod request;
pub mod run;
pub mod scenario;
pub mod shape;
pub mod via;
pub mod workload;

#[cfg(test)]
mod scenario_tests;
