//! Network namespaces: running `ip` inside them, and running Rust code in them.

use std::{
    fs::File,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs a command and fails with its stderr if it fails.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS...` in the root namespace.
pub fn ip(args: &[&str]) -> Result<Output> {
    sh(Command::new("ip").args(args))
}

/// `ip -n NS ARGS...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<Output> {
    sh(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip netns exec NS PROGRAM ARGS...`, waiting for it.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    sh(Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args))
}

/// A command prepared to run inside `ns` (via `ip netns exec`).
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Sets a sysctl inside `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    exec_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")]).map(|_| ())
}

/// Names of the existing namespaces starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Moves the calling thread into `ns`. Only this thread changes namespace.
pub fn enter(ns: &str) -> Result<()> {
    let f =
        File::open(format!("{NETNS_DIR}/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {ns}"))?;
    Ok(())
}

/// Runs `f` on a new thread inside `ns` and returns its result.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<T> {
        enter(&ns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}
