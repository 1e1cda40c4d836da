//! How a request reaches the gateway: over the pool of kept-alive
//! connections (the L7 route, as a gateway's clients would), or on a
//! connection of its own from a source port its plan index fixes (the L4
//! VIP). XDP hashes each connection's addresses and ports to pick its node,
//! so a port the kernel chose at random would make every run of one plan
//! send some of its requests to other nodes; a fixed port makes the pick
//! part of the plan, as the arrival times are.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioIo,
};
use tokio::{net::TcpSocket, time::Duration};

/// The first source port a fixed-port client uses.
const FIRST_PORT: u16 = 10_000;
/// How many it has: a client namespace sends at most this many requests.
pub const PORTS: usize = 50_000;
/// How long a connection may take to open.
const CONNECT: Duration = Duration::from_secs(5);

/// How requests are sent.
#[derive(Clone)]
pub enum Via {
    /// Kept-alive connections from hyper's pool.
    Pool(Client<HttpConnector, Full<Bytes>>),
    /// A connection per request, from [`source_port`] of its plan index.
    FixedPorts,
}

/// The source port of the request with plan index `index` (below
/// [`PORTS`], which [`check_plan`] makes sure of).
pub fn source_port(index: usize) -> u16 {
    FIRST_PORT + (index % PORTS) as u16
}

/// Fails when a plan has more requests than there are fixed ports: two
/// requests on one port, the first's connection still in TIME_WAIT, would
/// fail the second.
pub fn check_plan(requests: usize) -> Result<()> {
    if requests > PORTS {
        bail!(
            "{requests} requests: the L4 strategies give each request its own source port, and there are {PORTS}"
        );
    }
    Ok(())
}

impl Via {
    /// Sends `req` (its URI absolute, naming `target`), the request with
    /// plan index `index`, and returns the response head; the body streams
    /// as it is read.
    pub async fn request(
        &self,
        target: SocketAddr,
        index: usize,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>> {
        if let Via::Pool(client) = self {
            return Ok(client.request(req).await?);
        }
        let port = source_port(index);
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .with_context(|| format!("binding source port {port}"))?;
        let stream = tokio::time::timeout(CONNECT, socket.connect(target))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {target} took over {CONNECT:?}"))?
            .with_context(|| format!("connecting to {target} from port {port}"))?;
        stream.set_nodelay(true)?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Runs until the response is read; dropping `tx` closes it then.
        tokio::spawn(conn);
        // On a connection of its own the request line carries the path
        // (origin form, as clients send it) and `Host` names the target.
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = path.parse()?;
        let host = header::HeaderValue::from_str(&target.to_string())?;
        req.headers_mut().insert(header::HOST, host);
        Ok(tx.send_request(req).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_of_a_plan_has_its_own_port() {
        let ports: std::collections::BTreeSet<u16> = (0..PORTS).map(source_port).collect();
        assert_eq!(ports.len(), PORTS);
        assert!(ports.iter().all(|p| *p >= FIRST_PORT));
        assert_eq!(source_port(7), source_port(7), "the same in every run");
        assert!(check_plan(PORTS).is_ok());
        assert!(
            check_plan(PORTS + 1)
                .unwrap_err()
                .to_string()
                .contains("source port")
        );
    }
}
