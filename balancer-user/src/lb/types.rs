//! The load balancer's value types: protocols, VIP identities, forwarding
//! modes, and the reports of pools and backends.

use std::{fmt, net::IpAddr, str::FromStr};

use balancer_common::{ForwardMode, PROTO_TCP, PROTO_UDP, VipKey};
use serde::{Deserialize, Serialize};

use super::VipSpec;
use crate::net::{MacAddr, addr_words, family};

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol {s:?}: use tcp or udp")),
        }
    }
}

/// Identity of a VIP: address, port (0 = all ports) and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VipId {
    /// Address clients connect to.
    pub addr: IpAddr,
    /// Port; 0 means every port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

impl VipId {
    /// The `VIPS` map key.
    pub(crate) fn key(&self) -> VipKey {
        VipKey {
            addr: addr_words(self.addr),
            port: self.port.to_be(),
            proto: self.proto.number(),
            family: family(self.addr),
        }
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            "*".to_string()
        } else {
            self.port.to_string()
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.proto),
        }
    }
}

impl FromStr for VipId {
    type Err = String;

    /// Parses `ADDR:PORT/PROTO`, `[V6ADDR]:PORT/PROTO`; PORT may be `*` or 0
    /// for all ports; `/PROTO` defaults to tcp.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let hint = "expected ADDR:PORT[/tcp|udp], e.g. 10.0.0.1:80/tcp or [2001:db8::1]:443";
        let (hostport, proto) = match s.rsplit_once('/') {
            Some((h, p)) => (h, p.parse()?),
            None => (s, Proto::Tcp),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: missing port; {hint}"))?;
        let host = match (host.strip_prefix('['), host.strip_suffix(']')) {
            (Some(h), Some(_)) => &h[..h.len() - 1],
            (None, None) if !host.contains(':') => host,
            _ => return Err(format!("{s:?}: write IPv6 addresses in brackets; {hint}")),
        };
        let addr: IpAddr = host
            .parse()
            .map_err(|_| format!("{s:?}: {host:?} is not an IP address; {hint}"))?;
        let port = if port == "*" {
            0
        } else {
            port.parse()
                .map_err(|_| format!("{s:?}: {port:?} is not a port (0-65535 or *); {hint}"))?
        };
        Ok(VipId { addr, port, proto })
    }
}

/// Forwarding mode, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// IPIP / IP6IP6 tunnel with direct server return.
    #[default]
    Tunnel,
    /// L2 direct server return (MAC rewrite only).
    L2Dsr,
}

impl Mode {
    /// The data plane's encoding.
    pub(crate) fn wire(self) -> ForwardMode {
        match self {
            Mode::Tunnel => ForwardMode::Tunnel,
            Mode::L2Dsr => ForwardMode::L2Dsr,
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "tunnel" | "ipip" => Ok(Mode::Tunnel),
            "l2-dsr" | "l2dsr" | "dsr" => Ok(Mode::L2Dsr),
            _ => Err(format!("unknown mode {s:?}: use tunnel or l2-dsr")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Tunnel => "tunnel",
            Mode::L2Dsr => "l2-dsr",
        })
    }
}

/// State of one backend in one pool, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the ring now (0 when drained or down).
    pub effective_weight: u32,
    /// Drained by the operator.
    pub drained: bool,
    /// Why the backend is down, if it is.
    pub down: Option<String>,
    /// Next-hop MAC.
    pub mac: Option<MacAddr>,
    /// Slot index in the maps.
    pub slot: u32,
    /// Ring slots held now.
    pub ring_slots: u64,
}

/// State of one VIP, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipInfo {
    /// The VIP's configuration.
    pub spec: VipSpec,
    /// Index in the maps.
    pub index: u32,
    /// Its pool.
    pub backends: Vec<BackendInfo>,
    /// Share of its new connections XDP refuses now (its tier shed), in
    /// 65536ths (65535: all).
    #[serde(default)]
    pub shed_share: u16,
}

/// Who marked a backend down. A backend is down while any source says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownSource {
    /// Next-hop resolution (no neighbour entry).
    NextHop,
    /// Health checks or telemetry.
    Health,
}
