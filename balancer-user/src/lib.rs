//! balancer's control plane.
//!
//! Module map, one folder per concern. Dependencies point down the list,
//! never up:
//!
//! - [`net`]: MAC addresses and address/word conversions; [`clock`]: Unix
//!   milliseconds; [`http`]: the one accept loop every HTTP listener uses;
//! - [`dataplane`]: the XDP programs: loading, attaching, pinning, adopting,
//!   and typed handles on their maps, each with a userspace shadow;
//! - [`lb`]: VIPs and backends: their types and validation, Maglev rings, the
//!   one engine that changes them, and the read-only pool view;
//! - [`control`]: the control loops and their inputs: Prometheus parsing,
//!   telemetry scraping and health, scoring, autoweight, next-hop MACs;
//! - [`route`]: what a route decides per request besides caching: its
//!   priority tier, and shedding when its pool saturates;
//! - [`forecast`]: demand forecasts (seasonal models behind one trait) and
//!   their rolling-origin evaluation;
//! - [`scale`]: replicas a pool should have, from its load and its
//!   forecast (never shrinking on a forecast alone);
//! - [`cache`]: the inference result cache and its L7 proxy (reads `lb`'s
//!   pool view, never the engine);
//! - [`config`]: the daemon's TOML file, parsed into the settings types each
//!   concern above owns;
//! - [`api`]: the admin API's messages, server and client;
//! - [`daemon`]: `balancer run`, wiring all of the above: state file,
//!   metrics endpoint and loops;
//! - [`agent`]: `balancer agent`, the exporter for backend hosts (NVML);
//! - [`emulate`]: `balancer emulate`'s model of an inference node (batching,
//!   KV cache, prefix caching) for benches and tests without a GPU.
//!
//! The CLI (in the binary) uses [`api`]'s client and the domain modules'
//! types; nothing here knows about the CLI.
#![deny(missing_docs)]

pub mod clock;
pub mod http;
pub mod net;

pub mod dataplane;
pub mod lb;

pub mod control;

pub mod route;

pub mod forecast;
pub mod scale;

pub mod cache;

pub mod config;

pub mod api;

pub mod daemon;

pub mod agent;

pub mod emulate;

#[cfg(test)]
mod testutil;
