//! balancer's control plane.
//!
//! Module map (dependencies point down the list, never up):
//!
//! - [`net`]: MAC addresses and address/word conversions;
//! - [`maglev`]: weighted Maglev ring construction;
//! - [`maps`]: typed handles on the BPF maps, each with a userspace shadow;
//! - [`dataplane`]: loading, attaching, pinning and adopting the XDP program;
//! - [`decap`]: the backend-side decapsulation program;
//! - [`lb`]: the one API that changes VIPs and backends;
//! - [`config`]: the daemon's TOML configuration; [`state`]: what it persists;
//! - [`neigh`]: next-hop MACs from the kernel's neighbour table;
//! - [`prom`]: the Prometheus text-format parser; [`telemetry`]: scraping and
//!   normalising backend metrics; [`scoring`]: from signals to weights;
//! - [`api`]: the admin API (server for the daemon, client for the CLI);
//! - [`metrics`]: the daemon's Prometheus endpoint;
//! - [`autoweight`]: the loop from telemetry to ring weights;
//! - [`cache`]: the inference result cache and its L7 proxy;
//! - [`daemon`]: `balancer run`, wiring all of the above;
//! - [`agent`], [`nvml`]: `balancer agent`, the exporter for backend hosts.
#![deny(missing_docs)]

pub mod agent;
pub mod api;
pub mod autoweight;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod lb;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod neigh;
pub mod net;
pub mod nvml;
pub mod prom;
pub mod scoring;
pub mod state;
pub mod telemetry;
