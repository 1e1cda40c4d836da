//! `cargo xtask setup`: brings a fresh machine to where the build and the tests
//! run. Every step checks first and does nothing when its piece is in place.
//!
//! - the nightly toolchain and its `rust-src` (the eBPF crate is built with
//!   `-Z build-std=core`);
//! - `bpf-linker` 0.13, built against the nightly toolchain's own libLLVM: the
//!   library is symlinked into a prefix under `$CARGO_HOME` (bpf-linker's
//!   runtime search path points there, so the prefix must stay) and
//!   `cargo +nightly install bpf-linker --features llvm-22` builds against it;
//! - the Debian packages the test suites and benchmarks run.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{self, output};

/// Debian packages and a binary each provides (how we tell it is installed).
pub const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("ethtool", "/usr/sbin/ethtool"),
    // The VM suite: the guest's emulator, its shell and the initramfs tools.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("kmod", "/usr/sbin/depmod"),
    // Strips debug info from the staged test binaries.
    ("binutils", "/usr/bin/objcopy"),
    // The cache's shared L2 in the Redis suites.
    ("redis-server", "/usr/bin/redis-server"),
    // Baselines of `bench e2e` and `bench proxy`.
    ("haproxy", "/usr/sbin/haproxy"),
    ("nginx", "/usr/sbin/nginx"),
    // The venv of the `openai` client the API fidelity suite drives.
    ("python3-venv", "/usr/share/doc/python3-venv"),
    // The font of the fleet bench's PNG plots.
    ("fonts-dejavu-core", PLOT_FONT),
];

/// The font the fleet bench's plots are drawn with (from fonts-dejavu-core).
pub const PLOT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The `openai` Python client the API fidelity suite (`tests/tests/
/// openai_client.rs`) drives, pinned, in a venv under `target/`.
pub const OPENAI_VERSION: &str = "3.57.0";

/// The venv's interpreter.
pub fn openai_python() -> PathBuf {
    util::target_dir()
        .join("openai-venv")
        .join("bin")
        .join("python")
}

const BPF_LINKER_VERSION: &str = "0.13";

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// One setup step: a name, a check, and an installer.
struct Step {
    name: &'static str,
    present: fn() -> bool,
    install: fn(&ProgressBar) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "rustup and the nightly toolchain",
        present: nightly_present,
        install: install_nightly,
    },
    Step {
        name: "nightly rust-src",
        present: rust_src_present,
        install: install_rust_src,
    },
    Step {
        name: "bpf-linker (against nightly's LLVM)",
        present: bpf_linker_present,
        install: install_bpf_linker,
    },
    Step {
        name: "Debian packages",
        present: packages_present,
        install: install_packages,
    },
    Step {
        name: "the openai Python client (API fidelity suite)",
        present: openai_present,
        install: install_openai,
    },
];

/// Runs every missing step (or, with `check`, only reports).
pub fn run_steps(check: bool) -> Result<()> {
    let pb = ProgressBar::new(STEPS.len() as u64);
    pb.set_style(ProgressStyle::with_template(
        "{prefix:>6} [{pos}/{len}] {spinner} {msg}",
    )?);
    pb.set_prefix("setup");
    pb.enable_steady_tick(Duration::from_millis(120));
    let mut missing = Vec::new();
    for step in STEPS {
        pb.set_message(format!("checking {}", step.name));
        if (step.present)() {
            pb.suspend(|| eprintln!("  ok        {}", step.name));
        } else if check {
            pb.suspend(|| eprintln!("  MISSING   {}", step.name));
            missing.push(step.name);
        } else {
            pb.set_message(format!("installing {}", step.name));
            (step.install)(&pb).with_context(|| format!("installing {}", step.name))?;
            if !(step.present)() {
                bail!("{} still missing after installing it", step.name);
            }
            pb.suspend(|| eprintln!("  installed {}", step.name));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if !missing.is_empty() {
        bail!("missing: {} (run `cargo xtask setup`)", missing.join(", "));
    }
    Ok(())
}

/// `cargo xtask setup [--check]`.
pub fn run(check: bool) -> Result<()> {
    run_steps(check)
}

/// Runs setup only if a step is missing (quick when all is in place).
pub fn ensure() -> Result<()> {
    if STEPS.iter().all(|s| (s.present)()) {
        return Ok(());
    }
    run_steps(false)
}

fn nightly_present() -> bool {
    output(rustup().args(["run", "nightly", "rustc", "--version"])).is_some()
}

fn install_nightly(_: &ProgressBar) -> Result<()> {
    if output(rustup().arg("--version")).is_none() {
        bail!(
            "rustup is not installed; install it (https://rustup.rs) and run `cargo xtask setup` again"
        );
    }
    util::run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn rust_src_present() -> bool {
    output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn install_rust_src(_: &ProgressBar) -> Result<()> {
    util::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> PathBuf {
    cargo_home().join("bin").join("bpf-linker")
}

fn bpf_linker_present() -> bool {
    // Running it also proves its libLLVM still resolves: a nightly update
    // renames the library and leaves an old bpf-linker broken.
    output(Command::new(bpf_linker()).arg("--version"))
        .is_some_and(|v| v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("asking nightly rustc for its sysroot")?;
    Ok(PathBuf::from(s.trim()))
}

/// Finds `libLLVM.so.<major>.<minor>-rust-*` in the nightly sysroot.
fn nightly_libllvm(sysroot: &Path) -> Result<(PathBuf, String)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && rest.contains("-rust-")
        {
            let major = rest.split('.').next().unwrap_or_default().to_string();
            return Ok((entry.path(), major));
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}; is the nightly toolchain complete?",
        lib.display()
    )
}

fn install_bpf_linker(pb: &ProgressBar) -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let (libllvm, major) = nightly_libllvm(&sysroot)?;
    // A stable prefix: bpf-linker's RUNPATH points into it.
    let prefix = cargo_home().join("balancer-llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let name = libllvm
        .file_name()
        .context("libLLVM file name")?
        .to_os_string();
    for link in [lib.join("libLLVM.so"), lib.join(&name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    pb.set_message(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes)"
    ));
    let mut cmd = rustup();
    cmd.args(["run", "nightly", "cargo", "install", "bpf-linker"])
        .args(["--version", &format!("^{BPF_LINKER_VERSION}")])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--force")
        .env("LLVM_PREFIX", &prefix)
        .env_remove("CARGO")
        .env_remove("RUSTC");
    let out = cmd.output().context("running cargo install bpf-linker")?;
    if !out.status.success() {
        let tail: Vec<_> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(20)
            .map(String::from)
            .collect();
        bail!(
            "cargo install bpf-linker failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

fn packages_present() -> bool {
    PACKAGES.iter().all(|(_, bin)| Path::new(bin).exists())
}

fn install_packages(pb: &ProgressBar) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(p, _)| *p)
        .collect();
    pb.set_message(format!("apt-get install {}", missing.join(" ")));
    let install = |pb: &ProgressBar| -> Result<()> {
        let out = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("running apt-get (is this Debian or Ubuntu, and are we root?)")?;
        if out.status.success() {
            return Ok(());
        }
        pb.set_message("apt-get update");
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    };
    if install(pb).is_ok() {
        return Ok(());
    }
    // Package lists may be stale or absent on a fresh machine.
    let upd = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get update")?;
    if !upd.status.success() {
        bail!(
            "apt-get update failed: {}. Install these packages by hand: {}",
            String::from_utf8_lossy(&upd.stderr).trim(),
            missing.join(" ")
        );
    }
    install(pb).with_context(|| format!("apt-get install {}", missing.join(" ")))
}

fn openai_present() -> bool {
    let probe = "import openai; print(openai.__version__)";
    output(Command::new(openai_python()).args(["-c", probe]))
        .is_some_and(|v| v.trim() == OPENAI_VERSION)
}

fn install_openai(pb: &ProgressBar) -> Result<()> {
    let python = openai_python();
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the venv path")?
        .to_path_buf();
    if !python.exists() {
        pb.set_message("python3 -m venv");
        // Debian's interpreter, whatever else is first on PATH.
        util::run(
            Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv),
        )?;
    }
    pb.set_message(format!("pip install openai=={OPENAI_VERSION}"));
    util::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("openai=={OPENAI_VERSION}")),
    )
}
