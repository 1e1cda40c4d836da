//! Compiles the eBPF programs (`balancer-ebpf`) for the BPF target and leaves the
//! objects in `OUT_DIR`, where `src/dataplane/objects.rs` embeds them.
//!
//! This does what `aya_build::build_ebpf` 0.2.0 does, with one difference: the
//! objects land in one shared target directory (`target/bpf`) instead of one per
//! host profile, so `cargo build`, `cargo test` and `cargo build --release`
//! don't each rebuild the BPF `core` and programs.
use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "balancer-ebpf";
const PROGRAMS: &[&str] = &["balancer", "decap", "bench"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=BALANCER_EBPF_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var_os("BALANCER_EBPF_SKIP").is_some() {
        // For tooling that only type-checks userspace (e.g. rust-analyzer).
        for p in PROGRAMS {
            std::fs::write(out_dir.join(p), b"")?;
        }
        println!("cargo:warning=BALANCER_EBPF_SKIP set: embedding empty eBPF objects");
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} not in the workspace"))?;
    let ebpf_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    println!("cargo:rerun-if-changed={ebpf_dir}");
    let common_dir = ebpf_dir.join("../balancer-common");
    println!("cargo:rerun-if-changed={common_dir}");

    // One target directory for all host profiles, so the BPF objects and the
    // BPF `core` are built once, not per profile.
    let target_dir = metadata.target_directory.join("bpf");

    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build"])
        .args(["--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir.as_std_path())
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(ebpf_dir.as_std_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = cmd.output().with_context(|| {
        format!("running {cmd:?}: is rustup installed? run `cargo xtask setup`")
    })?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF programs failed ({}). If nightly, rust-src or \
             bpf-linker is missing, run `cargo xtask setup`.",
            output.status
        );
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if line.starts_with("warning")
            && !line.contains("allows-misaligned-mem-access")
            && !line.contains("generated")
        {
            println!("cargo:warning={line}");
        }
    }
    let built = target_dir.join("bpfel-unknown-none").join("release");
    for p in PROGRAMS {
        let src = built.join(p);
        std::fs::copy(&src, out_dir.join(p)).with_context(|| format!("copying {src}"))?;
    }
    Ok(())
}
