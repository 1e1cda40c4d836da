//! What a request's cache key is, and whether a request may be cached at all.
//!
//! The key is a BLAKE3 digest of (route, path, model, model version,
//! canonical body). Canonical means: objects with sorted keys, no
//! whitespace, integral floats written as integers (`0.0` and `0` are the
//! same temperature), and the route's excluded top-level fields (such as
//! `user`) removed. Two requests that mean the same thing get the same key;
//! anything that changes the result changes it.

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
    /// `stream: true`: server-sent events pass through.
    Streaming,
    /// Sampling makes the result random (temperature not 0, or `n > 1`).
    Sampling,
    /// A generic route, and the client did not opt in.
    NotOptedIn,
    /// The client asked not to use the cache.
    OptedOut,
}

impl Bypass {
    /// A short label for headers and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::NotJson => "not-json",
            Self::Streaming => "streaming",
            Self::Sampling => "sampling",
            Self::NotOptedIn => "not-opted-in",
            Self::OptedOut => "opted-out",
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

/// Decides cacheability and canonicalises. `path` is the request path;
/// OpenAI paths follow their own determinism rules, anything else needs an
/// opt-in.
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
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(Bypass::Streaming);
    }
    let embeddings = path.ends_with("/embeddings");
    let generation = path.ends_with("/completions");
    if opt != OptIn::Force {
        if generation {
            let temp = obj.get("temperature").and_then(Value::as_f64);
            let n = obj.get("n").and_then(Value::as_f64).unwrap_or(1.0);
            let best_of = obj.get("best_of").and_then(Value::as_f64).unwrap_or(1.0);
            // The OpenAI default temperature is 1: absent means sampled.
            if temp != Some(0.0) || n > 1.0 || best_of > 1.0 {
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

/// The key of a cacheable request.
pub fn key(route: &str, path: &str, model: &str, version: &str, canonical: &[u8]) -> Key {
    let mut h = blake3::Hasher::new();
    // Length-prefixed parts: no two tuples can produce the same input.
    for part in [
        route.as_bytes(),
        path.as_bytes(),
        model.as_bytes(),
        version.as_bytes(),
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
mod tests {
    use super::*;

    fn k(path: &str, body: &str) -> Result<Key, Bypass> {
        let c = classify(
            path,
            body.as_bytes(),
            &["user".into()],
            OptIn::Default,
            false,
        )?;
        Ok(key("r", path, &c.model, "v1", &c.canonical))
    }

    #[test]
    fn canonical_requests_share_a_key() {
        let a = k("/v1/embeddings", r#"{"model":"m","input":"hi","user":"a"}"#).unwrap();
        let b = k(
            "/v1/embeddings",
            "{ \"input\" : \"hi\",\n \"model\":\"m\", \"user\":\"b\"}",
        )
        .unwrap();
        assert_eq!(a, b);
        let c = k(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","temperature":0}"#,
        )
        .unwrap();
        let d = k(
            "/v1/completions",
            r#"{"temperature":0.0,"prompt":"x","model":"m"}"#,
        )
        .unwrap();
        assert_eq!(c, d);
        let e = k(
            "/v1/completions",
            r#"{"model":"m","prompt":"y","temperature":0}"#,
        )
        .unwrap();
        assert_ne!(c, e);
        assert_ne!(
            key("r", "/p", "m", "v1", b"{}"),
            key("r", "/p", "m", "v2", b"{}")
        );
        assert_ne!(
            key("r", "/p", "m", "v", b"{}"),
            key("r2", "/p", "m", "v", b"{}")
        );
        assert_ne!(key("ab", "/p", "", "", b""), key("a", "b/p", "", "", b""));
    }

    #[test]
    fn determinism_rules() {
        let sampled = k("/v1/completions", r#"{"model":"m","prompt":"x"}"#);
        assert_eq!(sampled, Err(Bypass::Sampling));
        let n2 = k(
            "/v1/chat/completions",
            r#"{"model":"m","messages":[],"temperature":0,"n":2}"#,
        );
        assert_eq!(n2, Err(Bypass::Sampling));
        let st = k(
            "/v1/embeddings",
            r#"{"model":"m","input":"x","stream":true}"#,
        );
        assert_eq!(st, Err(Bypass::Streaming));
        assert_eq!(k("/v1/embeddings", "{not json"), Err(Bypass::NotJson));
        assert_eq!(k("/v1/embeddings", "[1]"), Err(Bypass::NotJson));
        assert_eq!(k("/rank", r#"{"q":1}"#), Err(Bypass::NotOptedIn));
        let forced = classify("/rank", br#"{"q":1}"#, &[], OptIn::Force, false);
        assert!(forced.is_ok());
        let out = classify(
            "/v1/embeddings",
            br#"{"input":"x"}"#,
            &[],
            OptIn::Bypass,
            false,
        );
        assert_eq!(out.err(), Some(Bypass::OptedOut));
    }

    #[test]
    fn prompt_and_key_text() {
        let c = classify(
            "/v1/chat/completions",
            br#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
            &[],
            OptIn::Default,
            false,
        )
        .unwrap();
        assert_eq!(c.prompt, "be brief\nhi");
        let key = key("r", "/", "m", "", b"");
        assert_eq!(Key::parse(&key.to_string()), Some(key));
        assert_eq!(Key::parse("zz"), None);
    }
}
