//! What it takes to create a VIP or add a backend, and the one validator of
//! each. The configuration, the state file, the admin API and the CLI's
//! argument parsers all call these, so a value accepted in one place is
//! accepted in all of them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{LbError, MAX_AFFINITY_SECS, MAX_WEIGHT, Mode, VipId};
use crate::net::{MacAddr, family};

/// Everything needed to create a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    /// Identity.
    pub id: VipId,
    /// Forwarding mode.
    pub mode: Mode,
    /// Client affinity timeout in seconds; `None` balances per connection.
    pub affinity_secs: Option<u32>,
    /// Its priority tier: how soon XDP sheds its new connections when its
    /// pool saturates ([`super::shed`]). VIPs are `critical` (never
    /// refused) unless configured otherwise, so an upgrade refuses nothing.
    #[serde(default = "vip_tier")]
    pub tier: crate::route::tier::Tier,
    /// What a refused new TCP connection gets (UDP is always dropped).
    #[serde(default)]
    pub refuse: Refusal,
}

/// What XDP does with a new TCP connection its VIP's tier refuses.
///
/// `rst` is the default, measured against `drop` (`bench dataplane`): it
/// costs a refused SYN about 30 ns more in XDP, and tells the client in one
/// round trip instead of leaving it on its SYN timer (1 s, then doubling;
/// clients with long connect timeouts hang for a minute or more), so it
/// can back off or fail over at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refusal {
    /// Drop the SYN: the client's stack retries on its SYN timer (1 s,
    /// then doubling), each retry drawn again. Nothing is sent to a
    /// (possibly spoofed) source.
    Drop,
    /// Answer the SYN with a RST from XDP: the client learns at once
    /// ("connection refused") and its own retry policy decides.
    #[default]
    Rst,
}

impl Refusal {
    /// Its name in configuration and the CLI.
    pub fn label(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Rst => "rst",
        }
    }
}

impl std::str::FromStr for Refusal {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "drop" => Ok(Self::Drop),
            "rst" => Ok(Self::Rst),
            _ => Err(format!("{s:?}: use \"drop\" or \"rst\"")),
        }
    }
}

/// A VIP's tier when none is given.
pub fn vip_tier() -> crate::route::tier::Tier {
    crate::route::tier::Tier::Critical
}

impl VipSpec {
    /// Checks the VIP on its own: a unicast address and an affinity timeout
    /// in range. (Whether it already exists is the engine's business.)
    pub fn validate(&self) -> Result<(), LbError> {
        validate_addr(self.id.addr, "a VIP")?;
        if let Some(t) = self.affinity_secs {
            validate_affinity(t)?;
        }
        Ok(())
    }
}

/// Everything needed to add a backend to a VIP's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Tunnel destination / server address.
    pub addr: IpAddr,
    /// Relative weight (0 drains).
    pub weight: u32,
    /// Next-hop MAC; `None` until resolved (the backend is down meanwhile).
    pub mac: Option<MacAddr>,
}

impl BackendSpec {
    /// Checks the backend against the VIP it joins: a unicast address, a
    /// weight in range, and for L2 DSR the VIP's address family.
    pub fn validate(&self, vip: &VipSpec) -> Result<(), LbError> {
        validate_addr(self.addr, "a backend")?;
        validate_weight(self.weight)?;
        if vip.mode == Mode::L2Dsr && family(self.addr) != family(vip.id.addr) {
            return Err(LbError::BadAddress {
                addr: self.addr,
                role: "a backend",
                why: "L2 DSR needs the backend in the VIP's address family",
            });
        }
        Ok(())
    }
}

/// A weight from 0 (drained) to [`MAX_WEIGHT`].
pub fn validate_weight(weight: u32) -> Result<u32, LbError> {
    if weight > MAX_WEIGHT {
        return Err(LbError::BadWeight(weight));
    }
    Ok(weight)
}

/// A client-affinity timeout from 1 s to [`MAX_AFFINITY_SECS`].
pub fn validate_affinity(secs: u32) -> Result<u32, LbError> {
    if secs == 0 || secs > MAX_AFFINITY_SECS {
        return Err(LbError::BadAffinityTimeout(secs));
    }
    Ok(secs)
}

/// An address that can carry traffic: not unspecified (`0.0.0.0`, `::`), not
/// multicast, not the IPv4 broadcast address. `role` names it in the error.
pub fn validate_addr(addr: IpAddr, role: &'static str) -> Result<(), LbError> {
    let bad = |why| Err(LbError::BadAddress { addr, role, why });
    if addr.is_unspecified() {
        return bad("it is unspecified");
    }
    if addr.is_multicast() {
        return bad("it is multicast");
    }
    if let IpAddr::V4(a) = addr
        && a.is_broadcast()
    {
        return bad("it is the broadcast address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Proto;

    fn vip(s: &str, mode: Mode) -> VipSpec {
        VipSpec {
            id: s.parse().unwrap(),
            mode,
            affinity_secs: None,
            refuse: Default::default(),
            tier: Default::default(),
        }
    }

    #[test]
    fn every_rule_names_its_field() {
        let v4 = vip("10.0.0.1:80/tcp", Mode::L2Dsr);
        let b = |a: &str, weight| BackendSpec {
            addr: a.parse().unwrap(),
            weight,
            mac: None,
        };
        let cases: Vec<(&str, Result<(), LbError>, Option<&str>)> = vec![
            ("a good VIP", v4.validate(), None),
            (
                "0.0.0.0 VIP",
                vip("0.0.0.0:80", Mode::Tunnel).validate(),
                Some("vip"),
            ),
            (
                "[::] VIP",
                vip("[::]:80", Mode::Tunnel).validate(),
                Some("vip"),
            ),
            (
                "multicast VIP",
                vip("224.0.0.1:80", Mode::Tunnel).validate(),
                Some("vip"),
            ),
            (
                "broadcast VIP",
                vip("255.255.255.255:80", Mode::Tunnel).validate(),
                Some("vip"),
            ),
            (
                "affinity 0",
                VipSpec {
                    affinity_secs: Some(0),
                    refuse: Default::default(),
                    tier: Default::default(),
                    ..v4.clone()
                }
                .validate(),
                Some("affinity_secs"),
            ),
            (
                "affinity too long",
                VipSpec {
                    affinity_secs: Some(MAX_AFFINITY_SECS + 1),
                    refuse: Default::default(),
                    tier: Default::default(),
                    ..v4.clone()
                }
                .validate(),
                Some("affinity_secs"),
            ),
            ("a good backend", b("10.0.1.1", 5).validate(&v4), None),
            (
                "weight too large",
                b("10.0.1.1", MAX_WEIGHT + 1).validate(&v4),
                Some("weight"),
            ),
            (
                "0.0.0.0 backend",
                b("0.0.0.0", 1).validate(&v4),
                Some("address"),
            ),
            (
                "v6 backend for L2 DSR v4",
                b("2001:db8::1", 1).validate(&v4),
                Some("address"),
            ),
        ];
        for (what, got, field) in cases {
            assert_eq!(
                got.as_ref().err().and_then(|e| e.field()),
                field,
                "{what}: {got:?}"
            );
            assert_eq!(got.is_ok(), field.is_none(), "{what}");
        }
        assert_eq!(Proto::Udp.to_string(), "udp");
    }
}
