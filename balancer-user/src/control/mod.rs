//! The control loops and what feeds them: Prometheus text parsing
//! ([`prom`]), scraping and normalising backend telemetry ([`telemetry`]),
//! turning signals into weights ([`scoring`]), the loop that applies them
//! ([`autoweight`]), and next-hop MACs from the kernel ([`neigh`]).

pub mod autoweight;
pub mod neigh;
pub mod prom;
pub mod scoring;
pub mod telemetry;
