//! `balancer emulate`'s model of an inference node, with no GPU.
//!
//! - [`profile`]: hardware classes (prefill speed, decode step time by batch
//!   size, KV cache, slots), read from a profile file naming their sources;
//! - [`prefix`]: prompts as chained block hashes and the node's LRU of
//!   computed blocks;
//! - [`engine`]: continuous batching with a KV budget, chunked prefill,
//!   prefix caching and preemption, planned step by step without a clock,
//!   first come first served or by priority;
//! - [`sim`]: the engine replayed in virtual time;
//! - [`node`]: the engine driven by a timer, one task per node;
//! - [`adapters`]: LoRA adapters, loaded on demand, least recently used
//!   evicted;
//! - [`models`]: non-LLM models (vision, speech, recommendation, time
//!   series, video), whose cost grows with their input's size;
//! - [`server`]: the OpenAI-compatible API and vLLM's metrics over a node;
//!   [`stats`]: its latency histograms.

pub mod adapters;
pub mod engine;
pub mod models;
pub mod node;
pub mod prefix;
pub mod profile;
pub mod server;
pub mod sim;
pub mod stats;

#[cfg(test)]
mod adapter_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
