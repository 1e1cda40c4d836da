//! `[daemon]`: the interface, namespace, socket, metrics and state file.

use std::{net::SocketAddr, path::PathBuf};

use super::{ConfigError, Ctx, DEFAULT_SOCKET, DEFAULT_STATE_FILE, DaemonConfig, RawConfig};
use crate::dataplane::AttachMode;

/// Parses `[daemon]`. Without an interface the daemon is a cache-only
/// gateway, which needs a cache route.
pub(super) fn parse(raw: &RawConfig, cx: &Ctx<'_>) -> Result<DaemonConfig, ConfigError> {
    let path = cx.path;
    let d = &raw.daemon;
    let iface = match &d.iface {
        Some(s) if s.get_ref().is_empty() || s.get_ref().len() > 15 => {
            return cx.err(
                s.span(),
                "daemon.iface",
                "an interface name of 1 to 15 characters, e.g. \"eth0\"",
            );
        }
        Some(s) => Some(s.get_ref().clone()),
        None if !raw.cache_route.is_empty() => None,
        None => {
            return Err(ConfigError {
                path: path.to_path_buf(),
                line: None,
                col: None,
                field: "daemon.iface".into(),
                message: "missing: name the interface to attach to, e.g. iface = \"eth0\" (or configure a [[cache_route]] for a cache-only gateway)"
                    .into(),
            });
        }
    };
    let xdp_mode = match &d.xdp_mode {
        None => AttachMode::Driver,
        Some(s) => match s.get_ref().as_str() {
            "driver" | "native" => AttachMode::Driver,
            "generic" | "skb" => AttachMode::Generic,
            other => {
                return cx.err(
                    s.span(),
                    "daemon.xdp_mode",
                    format!("{other:?}: use \"driver\" or \"generic\""),
                );
            }
        },
    };
    let netns = d.netns.as_ref().map(|s| s.get_ref().clone());
    let pin_dir = match &d.pin_dir {
        Some(s) => PathBuf::from(s.get_ref()),
        None => {
            crate::dataplane::default_pin_dir(iface.as_deref().unwrap_or("none"), netns.as_deref())
        }
    };
    let socket = d
        .socket
        .as_ref()
        .map(|s| PathBuf::from(s.get_ref()))
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let metrics = match &d.metrics {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                return cx.err(
                    s.span(),
                    "daemon.metrics",
                    "an address and port like \"127.0.0.1:9100\", or \"\" to disable",
                );
            }
        },
    };
    let state_file = d
        .state_file
        .as_ref()
        .map(|s| PathBuf::from(s.get_ref()))
        .unwrap_or_else(|| DEFAULT_STATE_FILE.into());

    Ok(DaemonConfig {
        iface,
        xdp_mode,
        netns,
        pin_dir,
        socket,
        metrics,
        state_file,
    })
}
