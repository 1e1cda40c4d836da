//! `[daemon]`: the interface, namespace, socket, metrics and state file.

use std::{
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

use super::{ConfigError, Ctx, DEFAULT_SOCKET, DEFAULT_STATE_FILE, DaemonConfig, RawConfig};
use crate::dataplane::AttachMode;

/// Parses `[daemon]`. Without an interface the daemon is a cache-only
/// gateway, which needs a cache route.
pub(super) fn parse(raw: &RawConfig, cx: &Ctx<'_>) -> Result<DaemonConfig, ConfigError> {
    let path = cx.path;
    let d = &raw.daemon;
    let iface = match &d.iface {
        Some(s) => match validate_iface(s.get_ref()) {
            Ok(()) => Some(s.get_ref().clone()),
            Err(m) => return cx.err(s.span(), "daemon.iface", m),
        },
        None if !raw.route.is_empty() || !raw.cache_route.is_empty() => None,
        None => {
            return Err(ConfigError {
                path: path.to_path_buf(),
                line: None,
                col: None,
                field: "daemon.iface".into(),
                message: "missing: name the interface to attach to, e.g. iface = \"eth0\" (or configure a [[route]] for a proxy-only gateway)"
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
    let netns = match &d.netns {
        Some(s) => match validate_netns(s.get_ref()) {
            Ok(()) => Some(s.get_ref().clone()),
            Err(m) => return cx.err(s.span(), "daemon.netns", m),
        },
        None => None,
    };
    let pin_dir = match &d.pin_dir {
        Some(s) => match validate_pin_dir(Path::new(s.get_ref())) {
            Ok(()) => PathBuf::from(s.get_ref()),
            Err(m) => return cx.err(s.span(), "daemon.pin_dir", m),
        },
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

/// Checks a name that becomes one path component (an interface or namespace
/// name lands in the pin directory's path): no `/`, not `.` or `..`, no
/// whitespace or NUL, and at most `max` bytes.
fn validate_component(what: &str, s: &str, max: usize, example: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!(
            "{s:?}: {what} of 1 to {max} bytes, e.g. \"{example}\""
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a {what}, e.g. \"{example}\""));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == '\0' || c.is_whitespace())
    {
        return Err(format!(
            "{s:?}: a {what} has no {c:?} (no '/', whitespace or NUL), e.g. \"{example}\""
        ));
    }
    Ok(())
}

/// Checks an interface name as Linux does (`dev_valid_name`): 1 to 15 bytes
/// (`IFNAMSIZ` - 1), no `/`, `:`, whitespace or NUL, not `.` or `..`.
pub fn validate_iface(s: &str) -> Result<(), String> {
    validate_component("an interface name", s, 15, "eth0")?;
    if s.contains(':') {
        return Err(format!(
            "{s:?}: an interface name has no ':', e.g. \"eth0\""
        ));
    }
    Ok(())
}

/// Checks a named network namespace (a file in `/var/run/netns`): 1 to 255
/// bytes, no `/`, whitespace or NUL, not `.` or `..`.
pub fn validate_netns(s: &str) -> Result<(), String> {
    validate_component("a network namespace name", s, 255, "gw")
}

/// Checks a pin directory: an absolute, plain path strictly inside the BPF
/// filesystem. Attach and detach remove pins in it, so it must never name a
/// directory that holds anything else (`/var/lib/balancer`, `/`), nor
/// `/sys/fs/bpf` itself.
pub fn validate_pin_dir(p: &Path) -> Result<(), String> {
    let bpffs = Path::new(crate::dataplane::BPFFS);
    let plain = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !p.is_absolute() || !plain {
        return Err(format!(
            "{}: an absolute path without '.' or '..', inside {}, e.g. \"{}/balancer/eth0\"",
            p.display(),
            bpffs.display(),
            bpffs.display()
        ));
    }
    match p.strip_prefix(bpffs) {
        Ok(rest) if rest.components().next().is_some() => Ok(()),
        _ => Err(format!(
            "{} is not inside the BPF filesystem: pins live below {} (e.g. \"{}/balancer/eth0\"); \
             attach and detach remove pins there",
            p.display(),
            bpffs.display(),
            bpffs.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn err(src: &str) -> String {
        match Config::parse(Path::new("t.toml"), src) {
            Ok(_) => panic!("accepted: {src}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn pin_dir_outside_bpffs_is_refused() {
        for dir in [
            "/var/lib/balancer",
            "/",
            "/sys/fs/bpf",
            "/sys/fs/bpf/",
            "/sys/fs/bpf/../x",
            "balancer",
            "/sys/fs/bpfx/a",
        ] {
            let e = err(&format!(
                "[daemon]\niface = \"eth0\"\npin_dir = \"{dir}\"\n"
            ));
            assert!(
                e.contains("t.toml:3:") && e.contains("daemon.pin_dir"),
                "{dir}: {e}"
            );
            assert!(e.contains("/sys/fs/bpf"), "{dir}: {e}");
        }
        let ok = Config::parse(
            Path::new("t.toml"),
            "[daemon]\niface = \"eth0\"\npin_dir = \"/sys/fs/bpf/mine/eth0\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn iface_and_netns_that_are_not_one_path_component_are_refused() {
        for name in [
            "..",
            ".",
            "a/b",
            "eth 0",
            "eth0\\u0000",
            "eth:0",
            "abcdefghijklmnop",
            "",
        ] {
            let e = err(&format!("[daemon]\niface = \"{name}\"\n"));
            assert!(e.contains("daemon.iface"), "{name:?}: {e}");
        }
        for name in ["..", ".", "a/b", "n s", ""] {
            let e = err(&format!("[daemon]\niface = \"eth0\"\nnetns = \"{name}\"\n"));
            assert!(e.contains("daemon.netns"), "{name:?}: {e}");
        }
    }
}
