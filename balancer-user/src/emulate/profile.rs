//! Hardware classes: what one emulated node can do, from a profile file.
//!
//! A class gives the figures the engine model needs (prefill speed, decode
//! time per step as a function of batch size, KV-cache size, batch slots)
//! and names the public sources they come from, so a reader can check them.
//!
//! ```toml
//! [[class]]
//! name = "h100-8b"
//! source = "vLLM 0.6 benchmarks, Llama-3.1-8B, H100 SXM, bf16"
//! prefill_tokens_per_s = 40000
//! decode_ms_base = 6.0
//! decode_ms_per_seq = 0.05
//! kv_tokens = 450000
//! max_seqs = 256
//! ```

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize;

use super::models::ModelSpec;

/// Errors reading a profile file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a profile.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A class's figure is out of range.
    #[error("class {class:?}: {field} {message}")]
    Invalid {
        /// The class.
        class: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Two classes share a name, or there is none.
    #[error("{0}")]
    Classes(String),
    /// The `[lora]` table is out of range.
    #[error("[lora]: {0}")]
    Lora(String),
    /// A `[[model]]` table is out of range.
    #[error("[[model]] {0}")]
    Model(String),
}

/// One hardware class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Name, referred to by scenario files.
    pub name: String,
    /// The public figures these numbers come from.
    pub source: String,
    /// Prompt tokens computed per second (prefill), whole node.
    pub prefill_tokens_per_s: f64,
    /// Time of one decode step with one sequence, milliseconds.
    pub decode_ms_base: f64,
    /// Extra step time per further sequence in the batch, milliseconds.
    pub decode_ms_per_seq: f64,
    /// KV-cache capacity, tokens.
    pub kv_tokens: u32,
    /// Sequences in the batch at most.
    pub max_seqs: u32,
    /// Tokens per KV block (the unit of allocation and prefix caching).
    #[serde(default = "default_block_tokens")]
    pub block_tokens: u32,
    /// Tokens one step computes at most, decode and prefill chunks together
    /// (vLLM's `max_num_batched_tokens`).
    #[serde(default = "default_step_tokens")]
    pub max_step_tokens: u32,
    /// Seconds from start until the base model is loaded; until then
    /// inference and `/health` answer 503.
    #[serde(default)]
    pub load_s: f64,
}

fn default_block_tokens() -> u32 {
    16
}

fn default_step_tokens() -> u32 {
    8192
}

impl Class {
    /// Checks every figure; the engine relies on these bounds.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |field, message: String| {
            Err(ProfileError::Invalid {
                class: self.name.clone(),
                field,
                message,
            })
        };
        if self.name.is_empty() || self.name.len() > 64 {
            return bad("name", "must be 1-64 bytes".into());
        }
        let positive = [
            ("prefill_tokens_per_s", self.prefill_tokens_per_s, 1e9),
            ("decode_ms_base", self.decode_ms_base, 60_000.0),
        ];
        for (field, v, max) in positive {
            if !(v.is_finite() && v > 0.0 && v <= max) {
                return bad(field, format!("{v} must be in (0, {max}]"));
            }
        }
        let v = self.decode_ms_per_seq;
        if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
            return bad("decode_ms_per_seq", format!("{v} must be in [0, 1000]"));
        }
        if !(1..=4096).contains(&self.block_tokens) {
            return bad(
                "block_tokens",
                format!("{} must be 1-4096", self.block_tokens),
            );
        }
        if self.kv_tokens < self.block_tokens || self.kv_tokens > 1 << 30 {
            return bad(
                "kv_tokens",
                format!("{} must hold one block and be at most 2^30", self.kv_tokens),
            );
        }
        if !(1..=65_536).contains(&self.max_seqs) {
            return bad("max_seqs", format!("{} must be 1-65536", self.max_seqs));
        }
        if !(self.load_s.is_finite() && (0.0..=3600.0).contains(&self.load_s)) {
            return bad("load_s", format!("{} must be in [0, 3600]", self.load_s));
        }
        if !(1..=1 << 20).contains(&self.max_step_tokens) {
            return bad(
                "max_step_tokens",
                format!("{} must be 1-1048576", self.max_step_tokens),
            );
        }
        Ok(())
    }

    /// KV blocks of the node.
    pub fn kv_blocks(&self) -> u32 {
        self.kv_tokens / self.block_tokens
    }

    /// One step's duration in seconds: `decode` sequences decoding one token
    /// each, plus `prefill` prompt tokens computed.
    pub fn step_secs(&self, decode: u32, prefill: u32) -> f64 {
        let batch = decode.max(1) as f64;
        let decode_ms = if decode == 0 && prefill > 0 {
            0.0
        } else {
            self.decode_ms_base + self.decode_ms_per_seq * (batch - 1.0)
        };
        decode_ms / 1e3 + prefill as f64 / self.prefill_tokens_per_s
    }
}

/// A profile file: the classes a fleet is built from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The classes.
    #[serde(rename = "class")]
    pub classes: Vec<Class>,
    /// The LoRA adapters every node can load.
    #[serde(default)]
    pub lora: Lora,
    /// The non-LLM models, each served by the classes it has a cost for.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelSpec>,
}

/// LoRA adapters (`[lora]`, with `[[lora.adapter]]` tables).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    /// Adapters loaded at once at most (vLLM's `--max-loras`, default 1).
    #[serde(default = "one")]
    pub max_loras: u32,
    /// Load time of an adapter loaded by API that the profile does not name.
    #[serde(default = "two")]
    pub default_load_s: f64,
    /// The adapters, with their load times.
    #[serde(default, rename = "adapter")]
    pub adapters: Vec<Adapter>,
}

/// One adapter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adapter {
    /// Its name, as requests give it in `model`.
    pub name: String,
    /// Seconds a load takes.
    pub load_s: f64,
}

fn one() -> u32 {
    1
}

fn two() -> f64 {
    2.0
}

impl Default for Lora {
    fn default() -> Self {
        Self {
            max_loras: one(),
            default_load_s: two(),
            adapters: Vec::new(),
        }
    }
}

impl Lora {
    /// Checks the bounds and that names are unique.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |m: String| Err(ProfileError::Lora(m));
        if !(1..=1024).contains(&self.max_loras) {
            return bad(format!("max_loras {} must be 1-1024", self.max_loras));
        }
        let secs = |v: f64| v.is_finite() && (0.0..=3600.0).contains(&v);
        if !secs(self.default_load_s) {
            return bad(format!(
                "default_load_s {} must be in [0, 3600]",
                self.default_load_s
            ));
        }
        let mut seen = BTreeSet::new();
        for a in &self.adapters {
            if a.name.is_empty() || a.name.len() > 256 {
                return bad("an adapter name must be 1-256 bytes".into());
            }
            if !secs(a.load_s) {
                return bad(format!(
                    "adapter {:?}: load_s {} must be in [0, 3600]",
                    a.name, a.load_s
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return bad(format!("adapter {:?} is defined twice", a.name));
            }
        }
        Ok(())
    }
}

impl Profile {
    /// Parses and validates a profile; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if p.classes.is_empty() {
            return Err(ProfileError::Classes(format!("{path}: no [[class]]")));
        }
        p.lora.validate()?;
        let mut seen = BTreeSet::new();
        for c in &p.classes {
            c.validate()?;
            if !seen.insert(c.name.as_str()) {
                return Err(ProfileError::Classes(format!(
                    "{path}: class {:?} is defined twice",
                    c.name
                )));
            }
        }
        let mut names = BTreeSet::new();
        for m in &p.models {
            m.validate(&seen)?;
            if !names.insert(m.name.as_str()) {
                return Err(ProfileError::Model(format!(
                    "{:?} is defined twice",
                    m.name
                )));
            }
        }
        Ok(p)
    }

    /// Reads and validates a profile file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let read = |source| ProfileError::Read {
            path: shown.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > 1 << 20 {
            return Err(ProfileError::Parse {
                path: shown,
                message: format!("{len} bytes; a profile is at most 1 MiB"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, &shown)
    }

    /// The non-LLM models a node of `class` serves: those `list` names
    /// (comma-separated; empty for none), or all it has a cost for.
    pub fn select_models(
        &self,
        list: Option<&str>,
        class: &str,
    ) -> Result<Vec<ModelSpec>, ProfileError> {
        let Some(list) = list else {
            return Ok(self
                .models
                .iter()
                .filter(|m| m.cost_on(class).is_some())
                .cloned()
                .collect());
        };
        let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = self.models.iter().find(|m| m.name == name).ok_or_else(|| {
                ProfileError::Model(format!(
                    "{name:?} is not defined (there are: {})",
                    known.join(", ")
                ))
            })?;
            if m.cost_on(class).is_none() {
                return Err(ProfileError::Model(format!(
                    "{name:?} has no cost for class {class:?}"
                )));
            }
            out.push(m.clone());
        }
        Ok(out)
    }

    /// The class named `name`.
    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }
}
