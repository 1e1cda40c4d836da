//! The data plane's settings (`CONFIG`): MTU and tunnel source prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer_common::DataplaneConfig;
use serde::{Deserialize, Serialize};

use super::LbError;
use crate::net::addr_words;

/// Data-plane settings: `[dataplane]` in the file, the `CONFIG` map in the
/// kernel (the cache has settings of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneSettings {
    /// L3 MTU towards backends; 0 disables the "too big" check.
    pub mtu: u32,
    /// IPv4 tunnel source prefix: host bits come from the flow hash.
    pub tunnel_src_v4: Ipv4Addr,
    /// Prefix length of `tunnel_src_v4` (8 to 32).
    pub tunnel_src_v4_len: u8,
    /// IPv6 tunnel source prefix.
    pub tunnel_src_v6: Ipv6Addr,
    /// Prefix length of `tunnel_src_v6` (64 to 128; at most the last 32 bits vary).
    pub tunnel_src_v6_len: u8,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            mtu: 1500,
            tunnel_src_v4: Ipv4Addr::new(172, 16, 0, 0),
            tunnel_src_v4_len: 16,
            tunnel_src_v6: Ipv6Addr::new(0xfd00, 0xba1a, 0, 0, 0, 0, 0, 0),
            tunnel_src_v6_len: 96,
        }
    }
}

impl DataplaneSettings {
    /// Checks the settings and returns them as the data plane reads them.
    pub fn validate(&self) -> Result<DataplaneConfig, LbError> {
        if self.mtu != 0 && !(576..=65_535).contains(&self.mtu) {
            return Err(bad(
                "mtu",
                format!(
                    "mtu {} out of range: use 576 to 65535, or 0 to disable the check",
                    self.mtu
                ),
            ));
        }
        if !(8..=32).contains(&self.tunnel_src_v4_len) {
            return Err(bad(
                "tunnel_src_v4",
                format!(
                    "tunnel_src_v4 prefix length /{} out of range: use /8 to /32",
                    self.tunnel_src_v4_len
                ),
            ));
        }
        if !(64..=128).contains(&self.tunnel_src_v6_len) {
            return Err(bad(
                "tunnel_src_v6",
                format!(
                    "tunnel_src_v6 prefix length /{} out of range: use /64 to /128",
                    self.tunnel_src_v6_len
                ),
            ));
        }
        let host4: u32 = if self.tunnel_src_v4_len == 32 {
            0
        } else {
            u32::MAX >> self.tunnel_src_v4_len
        };
        let bits6 = (128 - self.tunnel_src_v6_len as u32).min(32);
        let host6: u32 = if bits6 == 0 {
            0
        } else {
            u32::MAX >> (32 - bits6)
        };
        let v6 = addr_words(IpAddr::V6(self.tunnel_src_v6));
        Ok(DataplaneConfig {
            tunnel_src_v4: u32::from_ne_bytes(self.tunnel_src_v4.octets()),
            tunnel_src_v4_hashmask: u32::from_ne_bytes(host4.to_be_bytes()),
            tunnel_src_v6: v6,
            tunnel_src_v6_hashmask: u32::from_ne_bytes(host6.to_be_bytes()),
            mtu: self.mtu,
        })
    }
}

fn bad(field: &'static str, message: String) -> LbError {
    LbError::BadSetting { field, message }
}
