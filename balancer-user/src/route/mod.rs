//! What a route decides about each request beyond the cache: its priority
//! tier ([`tier`]), whether a saturated pool sheds it ([`admission`]), and
//! what the request costs: its shape, parsed once
//! ([`request`]), and tokens from bytes, calibrated per model from the
//! backends' `usage` ([`tokens`]; building blocks of the cost model and the
//! `aware` pick to come, not used by the proxy yet).
//!
//! The proxy (`cache::proxy`) asks this module; nothing here knows about
//! HTTP serving or the cache.

pub mod admission;
pub mod cost;
pub mod prefix;
pub mod request;
pub mod tier;
pub mod tokens;
