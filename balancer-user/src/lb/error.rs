//! The load balancer's one error type.

use std::net::IpAddr;

use super::{MAX_AFFINITY_SECS, MAX_WEIGHT, VipId, maglev::MaglevError};
use crate::dataplane::maps::MapsError;

/// Errors of the load-balancer API. Validation errors say what to change and
/// name the field ([`LbError::field`]), so that the configuration, the API and
/// the CLI report them against the right key without reading the text.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The VIP already exists.
    #[error("VIP {0} already exists")]
    VipExists(VipId),
    /// No such VIP.
    #[error("no VIP {0}; `balancer vip list` shows the configured ones")]
    NoSuchVip(VipId),
    /// The backend is already in the VIP's pool.
    #[error("backend {backend} is already in the pool of {vip}")]
    BackendExists {
        /// The VIP.
        vip: VipId,
        /// The backend address.
        backend: IpAddr,
    },
    /// The backend is not in the VIP's pool.
    #[error("backend {backend} is not in the pool of {vip}")]
    NoSuchBackend {
        /// The VIP.
        vip: VipId,
        /// The backend address.
        backend: IpAddr,
    },
    /// All VIP indexes are taken.
    #[error("all {0} VIP slots are in use; restart the data plane with a larger max_vips")]
    TooManyVips(u32),
    /// All backend slots are taken.
    #[error("all {0} backend slots are in use; restart the data plane with a larger max_backends")]
    TooManyBackends(u32),
    /// An address that cannot be a VIP or backend.
    #[error("{addr} cannot be {role}: {why}")]
    BadAddress {
        /// The address.
        addr: IpAddr,
        /// "a VIP" or "a backend".
        role: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A weight out of range.
    #[error("weight {0} out of range: use 0 to {MAX_WEIGHT} (0 drains)")]
    BadWeight(u32),
    /// An affinity timeout out of range.
    #[error("affinity timeout {0}s out of range: use 1 to {MAX_AFFINITY_SECS} seconds")]
    BadAffinityTimeout(u32),
    /// A data-plane setting out of range.
    #[error("invalid setting: {message}")]
    BadSetting {
        /// The setting's name, as in `[dataplane]`.
        field: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Building a ring failed.
    #[error(transparent)]
    Maglev(#[from] MaglevError),
}

impl LbError {
    /// The input field a validation error is about (`"vip"`, `"address"`,
    /// `"weight"`, `"affinity_secs"`, or a `[dataplane]` setting); `None` for
    /// errors of state or of the kernel.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            LbError::BadAddress { role: "a VIP", .. } => Some("vip"),
            LbError::BadAddress { .. } => Some("address"),
            LbError::BadWeight(_) => Some("weight"),
            LbError::BadAffinityTimeout(_) => Some("affinity_secs"),
            LbError::BadSetting { field, .. } => Some(field),
            _ => None,
        }
    }

    /// True for errors the caller can fix by changing its input (HTTP 4xx).
    pub fn is_invalid_input(&self) -> bool {
        self.field().is_some()
    }
}
