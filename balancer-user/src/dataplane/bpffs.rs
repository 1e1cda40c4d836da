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

/// Whether `path` is on a BPF filesystem. A path that does not exist yet is
/// judged by its nearest existing ancestor (where it would be created).
pub fn is_on_bpffs(path: &Path) -> io::Result<bool> {
    let mut p = path;
    loop {
        match statfs(p) {
            Ok(st) => return Ok(st.filesystem_type().0 == BPF_FS_MAGIC),
            Err(nix::errno::Errno::ENOENT) => match p.parent() {
                Some(up) if !up.as_os_str().is_empty() => p = up,
                _ => return Ok(false),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Refuses unless `dir` is on bpffs: the only place pins can be, and so the
/// only place removing "our pins" cannot delete someone else's files.
pub fn require_bpffs(dir: &Path) -> io::Result<()> {
    if is_on_bpffs(dir)? {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not on a BPF filesystem (bpffs); refusing to remove anything there",
            dir.display()
        ),
    ))
}

/// Removes the pins `names` from `dir`, then `dir` itself if that left it
/// empty; anything else in it stays. Refuses, removing nothing, unless `dir`
/// is on bpffs. A missing `dir` or pin is not an error.
pub fn remove_pins(dir: &Path, names: &[&str]) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    require_bpffs(dir)?;
    for n in names {
        match std::fs::remove_file(dir.join(n)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        // Not ours to empty: someone pinned something else here.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_pins_outside_bpffs_is_refused_and_deletes_nothing() {
        let dir = std::env::temp_dir().join(format!("balancer-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("link"), "not a pin").unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        let e = remove_pins(&dir, &["link"]).unwrap_err();
        assert!(e.to_string().contains("not on a BPF filesystem"), "{e}");
        assert!(dir.join("link").exists() && dir.join("state.json").exists());
        let e = super::super::Dataplane::detach(&dir).unwrap_err();
        assert!(e.to_string().contains("not on a BPF filesystem"), "{e}");
        assert!(dir.join("link").exists() && dir.join("state.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
