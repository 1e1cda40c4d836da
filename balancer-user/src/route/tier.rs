//! Priority tiers: which of `critical`, `standard` and `sheddable` a request
//! is, from its `x-priority` header, its tenant and its route's default.
//!
//! The rule that keeps a tier honest: a header may lower a request's tier,
//! but raise it only up to the most its tenant is allowed. A client that no
//! tenant's key names is held to the route's default, so it cannot claim
//! `critical`.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
};

use hyper::{HeaderMap, header::HeaderName};
use serde::{Deserialize, Serialize};

/// The header a client names its tier in.
pub const X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");

/// A request's priority tier. Ordered by importance, so the lower of two
/// tiers is their `min`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Best effort: shed first (when the route sheds).
    Sheddable,
    /// The default.
    #[default]
    Standard,
    /// Never shed.
    Critical,
}

impl Tier {
    /// Every tier, most important first.
    pub const ALL: [Tier; 3] = [Tier::Critical, Tier::Standard, Tier::Sheddable];

    /// Every tier by its config word.
    pub const WORDS: [(&'static str, Tier); 3] = [
        ("critical", Tier::Critical),
        ("standard", Tier::Standard),
        ("sheddable", Tier::Sheddable),
    ];

    /// Its name in headers, config and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Tier::Critical => "critical",
            Tier::Standard => "standard",
            Tier::Sheddable => "sheddable",
        }
    }

    /// Its place in [`Tier::ALL`] (0 is `critical`).
    pub const fn index(self) -> usize {
        match self {
            Tier::Critical => 0,
            Tier::Standard => 1,
            Tier::Sheddable => 2,
        }
    }

    /// vLLM's `priority` field for it: lower is scheduled first.
    pub const fn vllm_priority(self) -> i64 {
        self.index() as i64
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why an `x-priority` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x-priority {0:?}: use critical, standard, sheddable or an integer (negative: sheddable)")]
pub struct BadTier(pub String);

impl FromStr for Tier {
    type Err = BadTier;

    /// A name, or an integer as the Gateway API Inference Extension gives
    /// priorities: negative is sheddable, 0 standard, positive critical.
    fn from_str(s: &str) -> Result<Self, BadTier> {
        let t = s.trim();
        if let Some(tier) = Tier::ALL.iter().find(|x| t.eq_ignore_ascii_case(x.label())) {
            return Ok(*tier);
        }
        match t.parse::<i64>() {
            Ok(n) if n < 0 => Ok(Tier::Sheddable),
            Ok(0) => Ok(Tier::Standard),
            Ok(_) => Ok(Tier::Critical),
            Err(_) => Err(BadTier(t.chars().take(64).collect())),
        }
    }
}

/// A client the route knows by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (in logs, headers and metrics; never its keys).
    pub name: String,
    /// Its requests' tier when they name none.
    pub tier: Tier,
    /// The most its requests may claim.
    pub max_tier: Tier,
}

/// A route's tier rules: its default and the tenants it knows by key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TierPolicy {
    /// The tier, and the most a request may claim, of clients no key names.
    pub default: Tier,
    /// Tenants, by index into this list.
    pub tenants: Vec<Tenant>,
    /// Each key (the bearer token or `x-api-key` value) to its tenant.
    pub keys: HashMap<String, usize>,
    /// Pass the tier to engines as vLLM's `priority` body field.
    pub priority_field: bool,
}

// By hand: the keys are secrets and must never reach a log.
impl fmt::Debug for TierPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierPolicy")
            .field("default", &self.default)
            .field("tenants", &self.tenants)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("priority_field", &self.priority_field)
            .finish()
    }
}

/// A request's tier and who it was decided for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The tier.
    pub tier: Tier,
    /// The tenant its key names, if any.
    pub tenant: Option<&'a Tenant>,
    /// The header asked for more than the tenant may have.
    pub capped: bool,
}

impl TierPolicy {
    /// The tenant a request's credentials name: the token of
    /// `authorization: Bearer …`, else `x-api-key` (always these two, not
    /// the route's `credential_headers`, which are the cache key's).
    pub fn tenant(&self, headers: &HeaderMap) -> Option<&Tenant> {
        if self.keys.is_empty() {
            return None;
        }
        let bearer = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let api_key = || headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let key = bearer.or_else(api_key)?;
        self.keys.get(key).map(|&i| &self.tenants[i])
    }

    /// The request's tier. An unreadable `x-priority` is an error, not a
    /// silent default: the client meant something.
    pub fn decide(&self, headers: &HeaderMap) -> Result<Decision<'_>, BadTier> {
        let tenant = self.tenant(headers);
        let (default, max) = tenant.map_or((self.default, self.default), |t| (t.tier, t.max_tier));
        let asked = match headers.get(X_PRIORITY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        BadTier(
                            String::from_utf8_lossy(v.as_bytes())
                                .chars()
                                .take(64)
                                .collect(),
                        )
                    })?
                    .parse::<Tier>()?,
            ),
        };
        let (tier, capped) = match asked {
            None => (default, false),
            Some(a) => (a.min(max), a > max),
        };
        Ok(Decision {
            tier,
            tenant,
            capped,
        })
    }
}

/// `body` with vLLM's `priority` field set for `tier` (replacing any the
/// client sent: the gateway decides priorities), or `None` when the body is
/// not a JSON object and is better forwarded as it is.
pub fn with_priority(body: &[u8], tier: Tier) -> Option<Vec<u8>> {
    super::request::with_field(body, "priority", tier.vllm_priority().into())
}

/// Requests per tier, counted as they arrive.
#[derive(Debug, Default)]
pub struct TierCounts([AtomicU64; 3]);

impl TierCounts {
    /// Counts one request of `tier`.
    pub fn count(&self, tier: Tier) {
        self.0[tier.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, in [`Tier::ALL`]'s order.
    pub fn snapshot(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.0[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
