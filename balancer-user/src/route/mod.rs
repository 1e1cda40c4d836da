//! What a route decides about each request beyond the cache: today its
//! priority tier ([`tier`]).
//!
//! The proxy (`cache::proxy`) asks this module; nothing here knows about
//! HTTP serving or the cache.

pub mod tier;
