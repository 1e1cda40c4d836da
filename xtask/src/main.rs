//! `cargo xtask`: everything around the code, from a fresh machine on.
//!
//! - `setup`: installs what the build and the tests need (nightly `rust-src`,
//!   `bpf-linker` built against the nightly toolchain's own LLVM, Debian
//!   packages). Idempotent; `build`, `test`, `bench` and `demo` run it first
//!   when something is missing.
//! - `build`: builds the workspace (the eBPF objects are built by
//!   balancer-user's build script).
//! - `test`: lint, then every suite on the host.
//! - `bench`: benchmarks that print figures and ratios against baselines
//!   measured in the same run.
//! - `demo`: the main job on its embedded default.

mod setup;
mod util;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::util::{cargo, run};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "balancer project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and packages the build and tests need.
    Setup {
        /// Only report what is missing; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the workspace.
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Lint, then every suite on the host, then every suite in a VM (as root:
    /// they load XDP programs).
    Test {
        /// Skip formatting and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only the host suites.
        #[arg(long, conflicts_with = "vm_only")]
        host_only: bool,
        /// Only the VM suites.
        #[arg(long)]
        vm_only: bool,
        /// Extra arguments for `cargo test` (a filter, `--nocapture`, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Every suite inside a QEMU guest on another kernel.
    VmTest(VmArgs),
    /// Run a benchmark.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: Bench,
        /// Arguments passed to the benchmark (e.g. `--repeat 1000000`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job on its embedded default: balance live traffic in a
    /// namespace testbed and show the counters.
    Demo {
        /// Arguments for the demo (e.g. `--seconds 20`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build (`up`) or remove (`down`) a namespace testbed.
    Testbed {
        /// `up` or `down`.
        #[arg(value_enum)]
        action: TestbedAction,
        /// Arguments for `up` (e.g. `--backends 5`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct VmArgs {
    /// Kernel to boot: `debian-6.1` (Debian 12's cloud kernel, from apt).
    #[arg(long, default_value = "debian-6.1", conflicts_with = "kernel_image")]
    kernel: String,
    /// Boot this kernel image instead (drivers must be built in).
    #[arg(long)]
    kernel_image: Option<std::path::PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Load sizes in the suites, scaled for software emulation (0 < s <= 1).
    #[arg(long, default_value_t = 0.25)]
    scale: f64,
    /// Only test binaries whose name contains this.
    #[arg(long)]
    filter: Option<String>,
}

impl VmArgs {
    fn options(&self) -> Result<vm::Options> {
        let kernel = match (&self.kernel_image, self.kernel.as_str()) {
            (Some(p), _) => vm::Kernel::Image(p.clone()),
            (None, "debian-6.1" | "debian") => vm::Kernel::Debian,
            (None, other) => {
                anyhow::bail!("unknown kernel {other:?}: use debian-6.1 or --kernel-image PATH")
            }
        };
        if !(self.scale > 0.0 && self.scale <= 1.0) {
            anyhow::bail!("--scale must be in (0, 1]");
        }
        Ok(vm::Options {
            kernel,
            timeout: std::time::Duration::from_secs(self.timeout),
            scale: self.scale,
            filter: self.filter.clone(),
        })
    }
}

impl Default for VmArgs {
    fn default() -> Self {
        Self {
            kernel: "debian-6.1".into(),
            kernel_image: None,
            timeout: 3600,
            scale: 0.25,
            filter: None,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TestbedAction {
    /// Build one and leave it running.
    Up,
    /// Remove every testbed.
    Down,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// ns/packet of every data-path path via BPF_PROG_TEST_RUN.
    Dataplane,
    /// Weighted Maglev build time and disruption.
    Maglev,
    /// HTTP through the balancer vs. direct vs. HAProxy on the testbed.
    E2e,
    /// The telemetry cycle for 1000 backends, and metric-change-to-ring time.
    Control,
    /// Cache policy hit ratios on the shared traces vs. LRU, moka, quick_cache.
    Cache,
    /// The cache proxy's hit path vs. nginx proxy_cache.
    Proxy,
    /// Invalidation from one gateway to another's L1 vs. Redis pub/sub.
    Invalidation,
    /// Cache hit latency and bypass throughput, quiet vs. ring churn.
    Churn,
    /// LLM traces on an emulated heterogeneous fleet, per balancing strategy.
    Fleet,
    /// Demand forecasters on the shared arrival series: MASE and sMAPE
    /// against seasonal naive and ETS, rolling origin.
    Forecast,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup { check } => setup::run(check),
        Cmd::Build { release } => {
            setup::ensure()?;
            // The eBPF crate builds for the BPF target only, through
            // balancer-user's build script; built for the host it clashes
            // with std's panic handler.
            let mut args = vec!["build", "--workspace", "--exclude", "balancer-ebpf"];
            if release {
                args.push("--release");
            }
            run(cargo().args(&args))
        }
        Cmd::Test {
            no_lint,
            host_only,
            vm_only,
            args,
        } => {
            setup::ensure()?;
            util::require_root("the test suites load XDP programs and create network namespaces")?;
            let t0 = std::time::Instant::now();
            if !no_lint {
                lint()?;
            }
            if !vm_only {
                // The integration suites run the `balancer` binary itself.
                util::build_bins(false)?;
                run(cargo()
                    .args(["test", "--workspace", "--exclude", "balancer-ebpf", "--"])
                    .args(&args))?;
                util::step(&format!(
                    "host suites passed ({:.0}s)",
                    t0.elapsed().as_secs_f64()
                ));
            }
            if !host_only {
                vm::run(VmArgs::default().options()?)?;
            }
            util::step(&format!(
                "all suites passed in {:.0}s",
                t0.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Cmd::VmTest(a) => {
            setup::ensure()?;
            vm::run(a.options()?)
        }
        Cmd::Bench { which, args } => {
            setup::ensure()?;
            // The forecast bench is arithmetic on files: no root, no binaries.
            if !matches!(which, Bench::Forecast) {
                util::require_root("benchmarks load XDP programs")?;
                // The e2e bench runs the daemon and the testbed's servers.
                util::build_bins(true)?;
            }
            let name = match which {
                Bench::Dataplane => "dataplane",
                Bench::Maglev => "maglev",
                Bench::E2e => "e2e",
                Bench::Control => "control",
                Bench::Cache => "cache",
                Bench::Proxy => "proxy",
                Bench::Invalidation => "invalidation",
                Bench::Churn => "churn",
                Bench::Fleet => "fleet",
                Bench::Forecast => "forecast",
            };
            run(cargo()
                .args(["bench", "-p", "balancer-tests", "--bench", name, "--"])
                .args(args.iter().map(|a| from_here(a))))
        }
        Cmd::Demo { args } => {
            setup::ensure()?;
            util::require_root("the demo creates network namespaces and attaches XDP")?;
            run(testbed_bin()?.arg("demo").args(&args))
        }
        Cmd::Testbed { action, args } => {
            setup::ensure()?;
            util::require_root("testbeds are network namespaces")?;
            match action {
                TestbedAction::Up => run(testbed_bin()?.arg("up").args(&args)),
                TestbedAction::Down => run(testbed_bin()?.arg("down")),
            }
        }
    }
}

/// `arg` with a relative path in it (`FILE` or `--opt=FILE`) made absolute
/// when that file exists here: benches run from their package's directory,
/// not from where the user typed the command.
fn from_here(arg: &str) -> String {
    let (opt, value) = match arg.split_once('=') {
        Some((o, v)) if o.starts_with("--") => (format!("{o}="), v),
        _ => (String::new(), arg),
    };
    let p = std::path::Path::new(value);
    if value.starts_with('-') || p.is_absolute() || !p.exists() {
        return arg.to_string();
    }
    match std::path::absolute(p) {
        Ok(abs) => format!("{opt}{}", abs.display()),
        Err(_) => arg.to_string(),
    }
}

/// The testbed tool, freshly built (release: the demo pushes real traffic),
/// told where the `balancer` binary of the same build is.
fn testbed_bin() -> Result<std::process::Command> {
    util::build_bins(true)?;
    let dir = util::target_dir().join("release");
    let mut c = std::process::Command::new(dir.join("testbed"));
    c.env("BALANCER_BIN", dir.join("balancer"));
    Ok(c)
}

/// Formatting and clippy, warnings denied. The eBPF crate is linted for the
/// host with `panic=abort`, as aya's template does, since its binaries are
/// `no_std`.
fn lint() -> Result<()> {
    util::step("lint: cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    util::step("lint: cargo clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "balancer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "clippy",
        "-p",
        "balancer-tests",
        "--features",
        "vm",
        "--tests",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(util::nightly_cargo().args([
        "clippy",
        "-p",
        "balancer-ebpf",
        "--",
        "-D",
        "warnings",
        "-C",
        "panic=abort",
    ]))
}

#[cfg(test)]
mod tests {
    use super::from_here;

    #[test]
    fn bench_paths_are_made_absolute_only_when_they_exist() {
        // "." exists wherever the tests run (the VM guest has no checkout).
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        let abs = from_here(".");
        assert!(abs.starts_with('/'), "{abs}");
        assert_eq!(std::fs::canonicalize(&abs).unwrap(), cwd);
        let opt = from_here("--scenario=.");
        assert!(opt.starts_with("--scenario=/"), "{opt}");
        for same in [
            "--quick",
            "no-such-file.toml",
            "/abs/path",
            "round-robin,random",
        ] {
            assert_eq!(from_here(same), same);
        }
    }
}
