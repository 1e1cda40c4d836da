//! Next-hop resolution: the MAC a tunnelled packet must be sent to.
//!
//! For a backend address the kernel is asked, over rtnetlink, which route it
//! takes (`RTM_GETROUTE`, like `ip route get`): the next hop is the route's
//! gateway, or the backend itself when it is on-link. The MAC of that next hop
//! comes from the kernel's neighbour table (`RTM_GETNEIGH`). A missing or
//! failed entry is kicked into resolution with an empty UDP datagram to the
//! discard port, and reported with a reason the operator can act on.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use futures_util::TryStreamExt;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
};

use crate::net::MacAddr;

/// Errors of the resolver itself (not of one resolution).
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    /// The netlink socket could not be opened.
    #[error("opening rtnetlink: {0}")]
    Open(#[source] std::io::Error),
    /// Dumping the neighbour table failed.
    #[error("reading the neighbour table: {0}")]
    Dump(String),
}

/// Outcome of resolving one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The next hop's MAC.
    Resolved {
        /// The MAC.
        mac: MacAddr,
        /// The next hop it belongs to (the backend, or a router).
        next_hop: IpAddr,
    },
    /// Not resolvable now, with the reason to show.
    Unresolved(String),
}

/// A resolver bound to the network namespace it was created in.
pub struct Resolver {
    handle: Handle,
}

/// A neighbour-table snapshot: (ifindex, address) → (state, MAC).
type Neighbours = HashMap<(u32, IpAddr), (NeighbourState, Option<MacAddr>)>;

impl Resolver {
    /// Opens the rtnetlink socket; must run inside a tokio runtime.
    pub fn new() -> Result<Self, NeighError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NeighError::Open)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn neighbours(&self) -> Result<Neighbours, NeighError> {
        let mut out = HashMap::new();
        let mut s = self.handle.neighbours().get().execute();
        while let Some(msg) = s
            .try_next()
            .await
            .map_err(|e| NeighError::Dump(e.to_string()))?
        {
            let mut dst = None;
            let mut mac = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(b);
                        mac = Some(MacAddr(m));
                    }
                    _ => {}
                }
            }
            if let Some(d) = dst {
                out.insert((msg.header.ifindex, d), (msg.header.state, mac));
            }
        }
        Ok(out)
    }

    /// The next hop and output interface towards `addr`.
    async fn route(&self, addr: IpAddr) -> Result<(IpAddr, u32), String> {
        let msg = match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut s = self.handle.route().get(msg).execute();
        let route = s
            .try_next()
            .await
            .map_err(|e| format!("no route to {addr}: {e}"))?
            .ok_or_else(|| format!("no route to {addr}"))?;
        let mut gateway = None;
        let mut oif = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| format!("route to {addr} has no output interface"))?;
        Ok((gateway.unwrap_or(addr), oif))
    }

    /// Resolves every address in `addrs` (one neighbour-table read for all).
    pub async fn resolve_all(
        &self,
        addrs: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Resolution)>, NeighError> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        let table = self.neighbours().await?;
        let mut out = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let r = match self.route(addr).await {
                Err(reason) => Resolution::Unresolved(reason),
                Ok((next_hop, oif)) => match table.get(&(oif, next_hop)) {
                    Some((
                        NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp,
                        Some(mac),
                    )) => Resolution::Resolved {
                        mac: *mac,
                        next_hop,
                    },
                    other => {
                        kick(addr);
                        let how = match other {
                            Some((NeighbourState::Failed, _)) => "failed (no ARP/ND reply)",
                            Some((NeighbourState::Incomplete, _)) => {
                                "incomplete (waiting for ARP/ND reply)"
                            }
                            _ => "no entry",
                        };
                        let via = if next_hop == addr {
                            String::new()
                        } else {
                            format!(" (router for {addr})")
                        };
                        Resolution::Unresolved(format!("neighbour {next_hop}{via}: {how}"))
                    }
                },
            };
            out.push((addr, r));
        }
        Ok(out)
    }
}

/// Makes the kernel resolve the next hop towards `addr` by sending it an empty
/// datagram on the discard port.
fn kick(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], SocketAddr::new(addr, 9));
    }
}
