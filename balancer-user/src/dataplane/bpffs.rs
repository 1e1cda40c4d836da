//! The BPF filesystem, where programs, links and maps are pinned so they outlive
//! the daemon.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::statfs,
};

/// Where bpffs is mounted on every distribution.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at [`BPFFS`] unless it is mounted there already.
pub fn ensure_mounted() -> io::Result<()> {
    let path = Path::new(BPFFS);
    if let Ok(st) = statfs(path)
        && st.filesystem_type().0 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Default pin directory of the balancer on `iface`, optionally inside a named
/// network namespace: `/sys/fs/bpf/balancer[/<netns>]/<iface>`.
pub fn default_pin_dir(iface: &str, netns: Option<&str>) -> PathBuf {
    let mut p = PathBuf::from(BPFFS).join("balancer");
    if let Some(ns) = netns {
        p.push(ns);
    }
    p.push(iface);
    p
}
