//! One daemon per state file and admin socket.
//!
//! `balancer run` takes an exclusive `flock` on `<state_file>.lock` and on
//! `<socket>.lock` before it touches anything, and holds both until it exits
//! (the kernel drops them when the process dies, even after `kill -9`). A
//! second daemon with the same state file or socket stops at once, naming the
//! process that holds the lock, instead of adopting the live maps and taking
//! over the admin socket. Both files exist without a data plane, so a
//! cache-only gateway is covered as well.
//!
//! A daemon with a data plane also locks its pin directory (through a file
//! under [`PIN_LOCKS`]): two daemons with their own state files and sockets
//! must still not share one interface's maps.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// Errors taking the daemon lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another balancer daemon is running: {path} is locked{}; stop it first \
         (or give this one its own {setting})",
        holder.as_deref().map(|p| format!(" by pid {p}")).unwrap_or_default()
    )]
    Held {
        /// The lock file (or pin directory).
        path: PathBuf,
        /// The pid written by the holder, when readable.
        holder: Option<String>,
        /// The settings that would separate the two daemons.
        setting: &'static str,
    },
    /// The lock file could not be created or locked.
    #[error("taking the daemon lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock (the file stays).
#[derive(Debug)]
pub struct DaemonLock {
    _locks: Vec<Flock<File>>,
}

/// The lock file that guards `path`: `path` with `.lock` appended.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl DaemonLock {
    /// Locks the state file and the admin socket of one daemon, and, when it
    /// has a data plane, the pin directory's lock file `pin_lock` (see
    /// [`pin_lock_path`]).
    pub fn acquire(
        state_file: &Path,
        socket: &Path,
        pin_lock: Option<&Path>,
    ) -> Result<Self, LockError> {
        let mut paths = vec![lock_path(state_file), lock_path(socket)];
        paths.dedup();
        let mut locks = Vec::new();
        for p in paths {
            locks.push(lock_one(&p, "daemon.state_file and daemon.socket")?);
        }
        if let Some(p) = pin_lock {
            locks.push(lock_one(p, "daemon.iface or daemon.pin_dir")?);
        }
        Ok(Self { _locks: locks })
    }
}

/// Where the lock that guards the pin directory `pin_dir` lives: bpffs holds
/// no regular files, and its directories are removed and made again on
/// attach, so the lock sits under [`PIN_LOCKS`], named after the path ('%'
/// and '/' escaped, so that two paths never share a name; a path too long
/// for a file name goes by its BLAKE3 hash).
pub fn pin_lock_path(pin_dir: &Path) -> PathBuf {
    let mut name = String::new();
    for c in pin_dir.to_string_lossy().chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    // A file name holds at most 255 bytes (a netns name alone may take
    // that many): long paths go by their hash.
    if name.len() > 200 {
        name = format!(
            "blake3-{}",
            blake3::hash(pin_dir.as_os_str().as_encoded_bytes()).to_hex()
        );
    }
    name.push_str(".lock");
    Path::new(PIN_LOCKS).join(name)
}

/// The directory of the pin-directory locks.
pub const PIN_LOCKS: &str = "/run/lock/balancer";

fn lock_one(path: &Path, setting: &'static str) -> Result<Flock<File>, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let mut lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut f, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                path: path.to_path_buf(),
                holder: (!pid.is_empty() && pid.len() < 16).then(|| pid.to_string()),
                setting,
            });
        }
        Err((_, e)) => return Err(io(e.into())),
    };
    // Our pid, for the next daemon's message; the lock is what counts.
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("balancer-lock-{}", std::process::id()));
        let (state, sock) = (dir.join("state.json"), dir.join("b.sock"));
        let first = DaemonLock::acquire(&state, &sock, None).unwrap();
        let err = DaemonLock::acquire(&state, &dir.join("other.sock"), None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(msg.contains("state.json.lock"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        // The socket alone is guarded too.
        assert!(DaemonLock::acquire(&dir.join("other.json"), &sock, None).is_err());
        drop(first);
        DaemonLock::acquire(&state, &sock, None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_daemons_with_their_own_files_cannot_share_a_pin_dir() {
        let dir = std::env::temp_dir().join(format!("balancer-pinlock-{}", std::process::id()));
        let pins = dir.join("pins.lock");
        let first =
            DaemonLock::acquire(&dir.join("a.json"), &dir.join("a.sock"), Some(&pins)).unwrap();
        let err =
            DaemonLock::acquire(&dir.join("b.json"), &dir.join("b.sock"), Some(&pins)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains("pins.lock") && msg.contains("daemon.pin_dir"),
            "{msg}"
        );
        drop(first);
        let again = DaemonLock::acquire(&dir.join("b.json"), &dir.join("b.sock"), Some(&pins));
        assert!(again.is_ok(), "{again:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pin_dirs_map_to_distinct_lock_names() {
        let a = pin_lock_path(Path::new("/sys/fs/bpf/balancer/eth0"));
        assert_eq!(
            a,
            Path::new("/run/lock/balancer/%2Fsys%2Ffs%2Fbpf%2Fbalancer%2Feth0.lock")
        );
        let b = pin_lock_path(Path::new("/sys/fs/bpf/balancer%2Feth0"));
        assert_ne!(a, b);
        // A netns name of 255 bytes still makes a valid file name.
        let long = format!("/sys/fs/bpf/balancer/{}/eth0", "n".repeat(255));
        let l = pin_lock_path(Path::new(&long));
        assert!(l.file_name().unwrap().len() < 255, "{l:?}");
        assert_ne!(l, pin_lock_path(Path::new(&long.replace("eth0", "eth1"))));
    }
}
