//! What a route decides about each request beyond the cache: its priority
//! tier ([`tier`]), whether a saturated pool sheds it ([`admission`]), and
//! what the request costs: its shape, parsed once ([`request`]), tokens
//! from bytes ([`tokens`]), its prompt's prefix blocks ([`prefix`]), and
//! its predicted time on each backend ([`cost`]), which `pick = "aware"`
//! places by and [`explain`] shows.
//!
//! The proxy (`cache::proxy`) asks this module; nothing here knows about
//! HTTP serving or the cache.

pub mod admission;
pub mod cost;
pub mod explain;
pub mod latency;
pub mod prefix;
pub mod queue;
pub mod request;
pub mod tier;
pub mod tokens;
pub mod zone;
