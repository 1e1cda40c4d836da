//! Active health checks: a TCP connect, or an HTTP GET that must answer 2xx,
//! within a timeout. A backend goes down after `fall` failures in a row and
//! comes back after `rise` successes in a row.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::scrape::{ScrapeLimits, Scraper};

/// How to check a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Check {
    /// Connect to this port on the backend.
    Tcp {
        /// Port.
        port: u16,
    },
    /// `GET http://backend:port/path`, 2xx expected.
    Http {
        /// Port.
        port: u16,
        /// Path.
        path: String,
    },
}

/// Runs one check against `addr`.
pub async fn probe(
    check: &Check,
    addr: std::net::IpAddr,
    timeout: Duration,
    scraper: &Scraper,
) -> Result<(), String> {
    match check {
        Check::Tcp { port } => {
            let sa = SocketAddr::new(addr, *port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(sa)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp {sa}: {e}")),
                Err(_) => Err(format!("tcp {sa}: no answer within {timeout:?}")),
            }
        }
        Check::Http { port, path } => {
            let host = match addr {
                std::net::IpAddr::V4(a) => a.to_string(),
                std::net::IpAddr::V6(a) => format!("[{a}]"),
            };
            let url = format!("http://{host}:{port}{path}");
            let limits = ScrapeLimits {
                timeout,
                max_body: 64 * 1024,
            };
            scraper
                .fetch(&url, &limits)
                .await
                .map(|_| ())
                .map_err(|e| format!("http {url}: {e}"))
        }
    }
}

/// Up/down state with rise and fall counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    /// Failures in a row that take a backend down.
    pub fall: u32,
    /// Successes in a row that bring it back.
    pub rise: u32,
    up: bool,
    streak: u32,
}

impl Hysteresis {
    /// Starts up.
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            up: true,
            streak: 0,
        }
    }

    /// Records one result; returns whether the backend is up now.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok == self.up {
            self.streak = 0;
        } else {
            self.streak += 1;
            let need = if self.up { self.fall } else { self.rise };
            if self.streak >= need {
                self.up = ok;
                self.streak = 0;
            }
        }
        self.up
    }

    /// Whether up.
    pub fn is_up(&self) -> bool {
        self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Hysteresis::new(3, 2);
        assert!(h.record(false) && h.record(false));
        assert!(!h.record(false), "third failure takes it down");
        assert!(!h.record(true));
        assert!(!h.record(false), "a failure resets the rise count");
        assert!(!h.record(true));
        assert!(h.record(true), "two successes in a row bring it back");
    }
}
