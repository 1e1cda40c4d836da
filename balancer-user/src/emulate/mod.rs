//! `balancer emulate`'s model of an inference node, with no GPU.
//!
//! - [`profile`]: hardware classes (prefill speed, decode step time by batch
//!   size, KV cache, slots), read from a profile file naming their sources;
//! - [`prefix`]: prompts as chained block hashes and the node's LRU of
//!   computed blocks;
//! - [`engine`]: continuous batching with a KV budget, chunked prefill,
//!   prefix caching and preemption, planned step by step without a clock;
//! - [`sim`]: the engine replayed in virtual time.

pub mod engine;
pub mod prefix;
pub mod profile;
pub mod sim;

#[cfg(test)]
mod tests;
