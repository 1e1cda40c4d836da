//! Binding the admin socket with no window in which others may connect.
//!
//! `bind` creates the socket file with the process umask, and a `chmod`
//! afterwards leaves a moment in which any local user could connect. So the
//! socket is bound inside a fresh directory only we can enter (0700), made
//! owner-only, and then renamed over the configured path. `rename` also
//! replaces a stale socket left by a killed daemon in one step (the daemon
//! lock guarantees no live daemon owns it).

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// Binds the admin socket at `path`, mode 0600, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path names no file"))?;
    let private = private_dir(dir)?;
    let result = (|| {
        let tmp = private.join(name);
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(private.join(name));
    let _ = std::fs::remove_dir(&private);
    result
}

/// Creates `dir/.balancer-bind.<random>`, mode 0700 (not subject to the umask's
/// loosening: `mkdir` only ever clears bits).
fn private_dir(dir: &Path) -> std::io::Result<PathBuf> {
    loop {
        let p = dir.join(format!(".balancer-bind.{:016x}", super::state::random()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[tokio::test]
    async fn binds_owner_only_and_replaces_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("balancer-sock-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let stale = bind(&path).unwrap();
        drop(stale);
        let _l = bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        // Nothing but the socket is left.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
