//! What a route decides about each request beyond the cache: its priority
//! tier ([`tier`]), and what the request costs: its shape, parsed once
//! ([`request`]), and tokens from bytes, calibrated per model from the
//! backends' `usage` ([`tokens`]; the cost model and the `aware` pick are
//! their users).
//!
//! The proxy (`cache::proxy`) asks this module; nothing here knows about
//! HTTP serving or the cache.

pub mod request;
pub mod tier;
pub mod tokens;
