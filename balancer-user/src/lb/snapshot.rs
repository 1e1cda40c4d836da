//! What the control plane persists across restarts, and its validation: a
//! state file is checked whole before anything touches the kernel.

use std::{collections::BTreeSet, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{BackendSpec, DataplaneSettings, LbError, VipSpec};
use crate::net::MacAddr;

/// A backend as persisted in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Drained by the operator.
    #[serde(default)]
    pub drained: bool,
    /// Next-hop MAC last known.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The MAC was configured, not resolved.
    #[serde(default)]
    pub mac_static: bool,
    /// Weight set by telemetry (overrides `weight` in the ring while set).
    #[serde(default)]
    pub auto_weight: Option<u32>,
    /// Slot in the maps (used to match the running data plane on adoption).
    pub slot: u32,
}

/// A VIP as persisted in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    /// Its configuration.
    pub spec: VipSpec,
    /// Index in the maps.
    pub index: u32,
    /// Its pool.
    pub backends: Vec<BackendRecord>,
}

/// Everything the control plane must remember across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Data-plane settings.
    pub settings: DataplaneSettings,
    /// VIPs with their pools.
    pub vips: Vec<VipRecord>,
}

/// A snapshot that fails validation: which VIP and backend, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", self.place())]
pub struct SnapshotError {
    /// Index of the VIP in `vips`, if the error is about one.
    pub vip: Option<usize>,
    /// Index of the backend in that VIP's `backends`, if about one.
    pub backend: Option<usize>,
    /// What is wrong.
    pub error: Box<LbError>,
}

impl SnapshotError {
    fn place(&self) -> String {
        match (self.vip, self.backend) {
            (Some(v), Some(b)) => format!("vips[{v}].backends[{b}]"),
            (Some(v), None) => format!("vips[{v}]"),
            _ => "settings".into(),
        }
    }
}

impl Snapshot {
    /// Checks everything the engine would check, without touching any map:
    /// settings, every VIP and backend, and duplicates.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let at = |vip, backend| {
            move |e: LbError| SnapshotError {
                vip,
                backend,
                error: Box::new(e),
            }
        };
        self.settings.validate().map_err(at(None, None))?;
        let mut ids = BTreeSet::new();
        for (i, v) in self.vips.iter().enumerate() {
            v.spec.validate().map_err(at(Some(i), None))?;
            if !ids.insert(v.spec.id) {
                return Err(at(Some(i), None)(LbError::VipExists(v.spec.id)));
            }
            let mut addrs = BTreeSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                let spec = BackendSpec {
                    addr: b.addr,
                    weight: b.weight,
                    mac: b.mac,
                };
                spec.validate(&v.spec).map_err(at(Some(i), Some(j)))?;
                if !addrs.insert(b.addr) {
                    return Err(at(Some(i), Some(j))(LbError::BackendExists {
                        vip: v.spec.id,
                        backend: b.addr,
                    }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Mode;

    fn snap(vip: &str, backends: &[(&str, u32)]) -> Snapshot {
        Snapshot {
            settings: DataplaneSettings::default(),
            vips: vec![VipRecord {
                spec: VipSpec {
                    id: vip.parse().unwrap(),
                    mode: Mode::Tunnel,
                    affinity_secs: None,
                    refuse: Default::default(),
                    tier: Default::default(),
                },
                index: 0,
                backends: backends
                    .iter()
                    .enumerate()
                    .map(|(i, (a, w))| BackendRecord {
                        addr: a.parse().unwrap(),
                        weight: *w,
                        drained: false,
                        mac: None,
                        mac_static: false,
                        auto_weight: None,
                        slot: i as u32,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn a_state_file_is_checked_whole() {
        let cases = [
            ("good", snap("10.0.0.1:80", &[("10.0.1.1", 1)]), None),
            ("0.0.0.0 VIP", snap("0.0.0.0:80", &[]), Some("vips[0]")),
            (
                "weight",
                snap("10.0.0.1:80", &[("10.0.1.1", 2_000_000)]),
                Some("vips[0].backends[0]"),
            ),
            (
                "duplicate backend",
                snap("10.0.0.1:80", &[("10.0.1.1", 1), ("10.0.1.1", 2)]),
                Some("vips[0].backends[1]"),
            ),
        ];
        for (what, s, place) in cases {
            let got = s.validate().err().map(|e| e.to_string());
            match (place, got) {
                (None, None) => {}
                (Some(p), Some(e)) => assert!(e.starts_with(p), "{what}: {e}"),
                (p, e) => panic!("{what}: expected {p:?}, got {e:?}"),
            }
        }
    }
}
