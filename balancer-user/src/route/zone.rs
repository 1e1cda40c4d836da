//! Zones: the gateway's own zone (or region) and a label per backend, so
//! that `pick = "aware"` keeps requests in the gateway's zone until its
//! backends there saturate, as Envoy's zone-aware routing does: a
//! cross-zone hop costs latency and, in most clouds, money.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

/// Where a backend is, seen from this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the gateway's zone.
    Local,
    /// In another zone.
    Remote,
    /// Not labelled (or the route has no zones).
    Unknown,
}

/// A route's zones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zones {
    /// The gateway's zone.
    pub local: String,
    /// Each labelled backend's zone, by address and port.
    pub by_addr: HashMap<SocketAddr, String>,
    /// By address alone (any port: a VIP's backends serve routes on their
    /// `backend_port`).
    pub by_ip: HashMap<IpAddr, String>,
}

impl Zones {
    /// Where `addr` is: its address and port's label first, else its
    /// address's.
    pub fn place(&self, addr: SocketAddr) -> Place {
        let zone = self
            .by_addr
            .get(&addr)
            .or_else(|| self.by_ip.get(&addr.ip()));
        match zone {
            None => Place::Unknown,
            Some(z) if *z == self.local => Place::Local,
            Some(_) => Place::Remote,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_placed_by_its_address_and_port_then_its_address() {
        let z = Zones {
            local: "a".into(),
            by_addr: [("10.0.0.1:9000".parse().unwrap(), "b".to_string())].into(),
            by_ip: [
                ("10.0.0.1".parse().unwrap(), "a".to_string()),
                ("10.0.0.2".parse().unwrap(), "b".to_string()),
            ]
            .into(),
        };
        // {description, backend, place}
        let cases = [
            (
                "its address's zone, any port",
                "10.0.0.1:8000",
                Place::Local,
            ),
            ("its address and port win", "10.0.0.1:9000", Place::Remote),
            ("another zone", "10.0.0.2:8000", Place::Remote),
            ("unlabelled", "10.0.0.3:8000", Place::Unknown),
        ];
        for (what, addr, place) in cases {
            assert_eq!(z.place(addr.parse().unwrap()), place, "{what}");
        }
    }
}
