//! Small helpers: running commands, progress lines, privilege checks.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the
/// workspace root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo` as invoked us (same toolchain), in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo +nightly`, in the workspace root.
pub fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]).current_dir(root());
    // The outer cargo's toolchain pin would win over `rustup run`.
    c.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    c
}

/// Builds every binary the demo, the testbeds and the benches start
/// (`balancer`, `testbed`), in the profile they are started from. Cargo
/// shows its own progress: a fresh build takes minutes.
pub fn build_bins(release: bool) -> Result<()> {
    step(&format!(
        "building the balancer and testbed binaries ({})",
        if release { "release" } else { "debug" }
    ));
    let mut c = cargo();
    c.args([
        "build",
        "-p",
        "balancer-user",
        "-p",
        "balancer-tests",
        "--bins",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// Runs a command, inheriting stdio; fails with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or `None` if it could not run or
/// failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a progress line.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Fails unless running as root, saying why root is needed.
pub fn require_root(why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root: {why}. Try `sudo -E cargo xtask ...`");
    }
    Ok(())
}
