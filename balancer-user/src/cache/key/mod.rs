//! What a request's cache key is, and whether a request may be cached at all.
//!
//! The key is a BLAKE3 digest of (route, path and query, model, model
//! version, credential, canonical body). Canonical means: objects with sorted
//! keys, no whitespace, integral floats written as integers (`0.0` and `0`
//! are the same temperature), and the route's excluded top-level fields
//! (such as `user`) removed. Two requests that mean the same thing get the
//! same key; anything the backend sees that changes the result changes it.
//! The credential part follows the route's [`KeyScope`].
//!
//! `sampling.rs` reads streaming and sampling settings the way the inference
//! servers do.

mod sampling;

use std::fmt;

use serde_json::{Map, Value};

/// A cache key: 32 bytes of BLAKE3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The first 8 bytes, for hashing onto backends and shards.
    pub fn short(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Parses the 64-hex-digit form.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Why a request is not cacheable (it is forwarded as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not a POST.
    Method,
    /// The body is not a JSON object.
    NotJson,
    /// A truthy `stream` (or a streaming path or `Accept`): server-sent
    /// events pass through.
    Streaming,
    /// Sampling makes the result random (temperature not 0, or `n > 1`).
    Sampling,
    /// A `require-auth` route, and the request carries no credential.
    NoCredentials,
    /// A generic route, and the client did not opt in.
    NotOptedIn,
    /// The client asked not to use the cache.
    OptedOut,
    /// The route runs no cache stage (`cache = false`).
    Off,
}

impl Bypass {
    /// A short label for headers and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::NotJson => "not-json",
            Self::Streaming => "streaming",
            Self::Sampling => "sampling",
            Self::NoCredentials => "no-credentials",
            Self::NotOptedIn => "not-opted-in",
            Self::OptedOut => "opted-out",
            Self::Off => "cache-off",
        }
    }
}

/// The client's explicit choice, from the `x-balancer-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptIn {
    /// No header: the route's rules decide.
    #[default]
    Default,
    /// `x-balancer-cache: force`: the client vouches the request is deterministic.
    Force,
    /// `x-balancer-cache: bypass`.
    Bypass,
}

impl OptIn {
    /// Reads the header value.
    pub fn parse(v: Option<&str>) -> Self {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("force") | Some("1") | Some("true") => Self::Force,
            Some("bypass") | Some("no-cache") | Some("0") | Some("false") => Self::Bypass,
            _ => Self::Default,
        }
    }
}

/// Who may share a route's entries (`key_scope` of a cache route).
///
/// `Shared` opens a side channel: a fast answer tells a client that someone
/// else asked the same thing within the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyScope {
    /// Every client shares entries, whatever its credentials.
    #[default]
    Shared,
    /// The credential headers' values are part of the key: only clients
    /// with the same credentials share an entry (requests without any share
    /// the anonymous entries).
    PerCredential,
    /// Like `Shared`, but a request without credentials is never answered
    /// from the cache, nor stored.
    RequireAuth,
}

impl KeyScope {
    /// Every scope, with its configuration word.
    pub const ALL: [(&'static str, Self); 3] = [
        ("shared", Self::Shared),
        ("per-credential", Self::PerCredential),
        ("require-auth", Self::RequireAuth),
    ];

    /// The configuration word.
    pub fn label(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("shared", |(l, _)| l)
    }

    /// The scope a configuration word names.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.iter().find(|(l, _)| *l == word).map(|(_, s)| *s)
    }

    /// The credential part of a key, from the request's credential headers
    /// (name and value of each one present, in the route's order): empty
    /// unless per-credential; `Err` on a `require-auth` route when there is
    /// none.
    pub fn credential<'a>(
        self,
        present: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Vec<u8>, Bypass> {
        let mut out = Vec::new();
        let mut any = false;
        for (name, value) in present {
            any = true;
            if self == Self::PerCredential {
                for part in [name.as_bytes(), value] {
                    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        if self == Self::RequireAuth && !any {
            return Err(Bypass::NoCredentials);
        }
        Ok(out)
    }
}

/// A request the cache may serve.
#[derive(Debug, Clone)]
pub struct Cacheable {
    /// The `model` field ("" when absent).
    pub model: String,
    /// The canonical body the key was made of.
    pub canonical: Vec<u8>,
    /// The prompt text, for prefix invalidation.
    pub prompt: String,
}

/// Decides cacheability and canonicalises. `path` is the request path:
/// generation paths (OpenAI, Anthropic, TGI, SGLang) follow their sampling
/// rules even on deterministic routes, embeddings are always deterministic,
/// anything else needs an opt-in.
pub fn classify(
    path: &str,
    body: &[u8],
    exclude: &[String],
    opt: OptIn,
    generic_deterministic: bool,
) -> Result<Cacheable, Bypass> {
    if opt == OptIn::Bypass {
        return Err(Bypass::OptedOut);
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Bypass::NotJson);
    };
    if sampling::streams(path, &obj) {
        return Err(Bypass::Streaming);
    }
    let embeddings = path.ends_with("/embeddings");
    if opt != OptIn::Force {
        if sampling::is_generation(path) {
            if sampling::sampled(&obj) {
                return Err(Bypass::Sampling);
            }
        } else if !embeddings && !generic_deterministic {
            return Err(Bypass::NotOptedIn);
        }
    }
    for f in exclude {
        obj.remove(f);
    }
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let prompt = prompt_text(&obj);
    let canonical = canonical_bytes(&Value::Object(obj));
    Ok(Cacheable {
        model,
        canonical,
        prompt,
    })
}

/// The key of a cacheable request. `target` is the path and query string
/// the backend is sent; `credential` comes from [`KeyScope::credential`].
pub fn key(
    route: &str,
    target: &str,
    model: &str,
    version: &str,
    credential: &[u8],
    canonical: &[u8],
) -> Key {
    let mut h = blake3::Hasher::new();
    // Length-prefixed parts: no two tuples can produce the same input.
    for part in [
        route.as_bytes(),
        target.as_bytes(),
        model.as_bytes(),
        version.as_bytes(),
        credential,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(canonical);
    Key(*h.finalize().as_bytes())
}

/// The text a prefix invalidation matches: `prompt`, `input`, or the
/// messages' contents joined by newlines.
fn prompt_text(obj: &Map<String, Value>) -> String {
    fn flat(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().map(flat).collect::<Vec<_>>().join("\n"),
            Value::Object(o) => o.get("content").map(flat).unwrap_or_default(),
            other => other.to_string(),
        }
    }
    for f in ["prompt", "input", "messages"] {
        if let Some(v) = obj.get(f) {
            return flat(v);
        }
    }
    String::new()
}

/// Canonical JSON: sorted keys (serde_json's map is ordered), no
/// whitespace, integral numbers as integers.
pub fn canonical_bytes(v: &Value) -> Vec<u8> {
    fn norm(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::from(f as i64)
                }
                _ => v.clone(),
            },
            other => other.clone(),
        }
    }
    serde_json::to_vec(&norm(v)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
