//! The state file: what the control plane was running, persisted after every
//! change so a restart (even after `kill -9`) restores exactly that.
//!
//! Writes are atomic: the new content goes to a temporary file in the same
//! directory, is flushed to disk, and replaces the old file with `rename`,
//! after which the directory is flushed too. A reader sees the old state or
//! the new one, never a mix. The temporary name is random and created with
//! `O_EXCL | O_NOFOLLOW`, so nothing planted at a guessable name (a symlink to
//! a file elsewhere) is ever written through.

use std::{
    collections::hash_map::RandomState,
    fs::{self, File, OpenOptions},
    hash::{BuildHasher, Hasher},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::lb::Snapshot;

/// Format version written into the file.
pub const STATE_VERSION: u32 = 1;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("reading state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid state (corrupt, or written by another version).
    #[error(
        "state file {path} is not valid ({message}); move it away to start from the configuration"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing failed; the previous state file is intact.
    #[error("writing state file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    snapshot: Snapshot,
}

/// Reads the state file; `Ok(None)` if there is none.
pub fn load(path: &Path) -> Result<Option<Snapshot>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let disk: OnDisk = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if disk.version != STATE_VERSION {
        return Err(StateError::Invalid {
            path: path.to_path_buf(),
            message: format!("version {}, this build reads {STATE_VERSION}", disk.version),
        });
    }
    // The engine's rules, checked before anything touches the kernel.
    disk.snapshot.validate().map_err(|e| StateError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Some(disk.snapshot))
}

/// Replaces the state file atomically.
pub fn save(path: &Path, snapshot: &Snapshot) -> Result<(), StateError> {
    let werr = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(werr)?;
    let body = serde_json::to_vec_pretty(&OnDisk {
        version: STATE_VERSION,
        snapshot: snapshot.clone(),
    })
    .map_err(|e| werr(std::io::Error::other(e)))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let (tmp, mut f) = create_temp(dir, name).map_err(werr)?;
    let result = (|| {
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// A random number from the OS-seeded keys of the standard hasher: enough to
/// make a temporary name unguessable (`O_EXCL` makes it safe regardless).
pub(super) fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Creates a new temporary file next to the state file: a random name,
/// `O_EXCL` (never an existing file) and `O_NOFOLLOW` (never through a
/// symlink).
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    for _ in 0..16 {
        let tmp = dir.join(format!(".{name}.tmp.{:016x}", random()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "no free temporary name after 16 tries",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::DataplaneSettings;

    #[test]
    fn roundtrip_and_errors() {
        let dir = std::env::temp_dir().join(format!("balancer-state-{}", std::process::id()));
        let path = dir.join("state.json");
        assert!(load(&path).unwrap().is_none());
        let snap = Snapshot {
            settings: DataplaneSettings::default(),
            vips: vec![],
        };
        save(&path, &snap).unwrap();
        assert_eq!(load(&path).unwrap(), Some(snap.clone()));
        fs::write(&path, "{ not json").unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid { .. })));
        fs::write(&path, r#"{"version": 99, "settings": null, "vips": []}"#).unwrap();
        assert!(load(&path).is_err());
        // No temporary files are left behind.
        save(&path, &snap).unwrap();
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_at_the_old_temp_name_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("balancer-state-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        // The name earlier builds wrote to: `.state.json.tmp.<pid>`.
        let planted = dir.join(format!(".state.json.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let snap = Snapshot {
            settings: DataplaneSettings::default(),
            vips: vec![],
        };
        save(&path, &snap).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert!(
            fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(load(&path).unwrap(), Some(snap));
        fs::remove_dir_all(&dir).unwrap();
    }
}
