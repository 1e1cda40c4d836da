//! Support shared by balancer's integration suites (`tests/tests/*.rs`), the
//! benchmarks and `cargo xtask`:
//!
//! - [`pkt`]: packets built with `etherparse`, and the packets the data path
//!   must turn them into;
//! - [`xdp`]: running programs through `BPF_PROG_TEST_RUN`;
//! - [`bench`]: the benchmark fixtures object and timing helpers;
//! - [`bpfvm`]: an eBPF interpreter that counts the instructions a path runs;
//! - [`netns`], [`testbed`]: a gateway, clients and backends in network
//!   namespaces; [`server`] is what the backends run and [`loadgen`] the
//!   clients;
//! - [`require_root`]: suites that need root fail loudly without it;
//! - [`scaled`], [`patience`]: load sizes shrink and deadlines grow on slow
//!   machines (`$BALANCER_TEST_SCALE`).
#![deny(missing_docs)]

pub mod bench;
pub mod bpfvm;
pub mod cachebed;
pub mod fleet;
pub mod forecast;
pub mod loadgen;
pub mod netns;
pub mod pkt;
pub mod scalesim;
pub mod server;
pub mod signals;
pub mod testbed;
pub mod traces;
pub mod xdp;

/// The fleet scenarios (`tests/scenarios`, or `$BALANCER_SCENARIOS` where the
/// checkout is not, as in the VM suite).
pub fn scenarios_dir() -> std::path::PathBuf {
    std::env::var_os("BALANCER_SCENARIOS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"))
}

/// The shared third-party data directory, if it is there.
pub fn shared_data_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("BALANCER_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
        });
    base.is_dir().then_some(base)
}

/// A file of the shared third-party data (`../shared/data` beside the
/// checkout, or `$BALANCER_SHARED_DATA`). Panics with a clear message if the
/// data is not there: tests that need it cannot pass without it.
pub fn shared_data(rel: &str) -> std::path::PathBuf {
    let base = std::env::var_os("BALANCER_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
        });
    let p = base.join(rel);
    if !p.exists() {
        panic!(
            "shared test data {} is missing: the suites read third-party samples from \
             ../shared/data beside the checkout (or $BALANCER_SHARED_DATA)",
            p.display()
        );
    }
    p
}

/// `$BALANCER_TEST_SCALE`: how fast this machine runs the suites relative to
/// the host, in (0, 1]; 1 when unset or invalid.
fn test_scale() -> f64 {
    std::env::var("BALANCER_TEST_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f: &f64| *f > 0.0 && *f <= 1.0)
        .unwrap_or(1.0)
}

/// Scales a load size by `$BALANCER_TEST_SCALE` (default 1). The VM suite runs
/// under software emulation and sets it below 1; the code paths are the same.
pub fn scaled(n: u64) -> u64 {
    ((n as f64 * test_scale()).round() as u64).max(1)
}

/// The time to allow for something that takes up to `d` on the host: `d`
/// divided by `$BALANCER_TEST_SCALE` (so `d` itself where that is unset).
///
/// Deadlines for waiting on a condition grow on slow machines; the condition
/// itself never changes. Use it for every polling deadline, timeout and
/// latency bound, so that no test passes or fails by wall-clock speed.
pub fn patience(d: std::time::Duration) -> std::time::Duration {
    d.div_f64(test_scale())
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children
/// inherit it); returns the soft limit now in force.
pub use balancer::http::raise_nofile;

/// The `testbed` binary (the backends' HTTP server): `$BALANCER_TESTBED_BIN`
/// when set, else `compiled`, normally `env!("CARGO_BIN_EXE_testbed")`. That
/// is a path on the build host; the VM suite puts the binary elsewhere.
pub fn testbed_bin(compiled: &str) -> std::path::PathBuf {
    std::env::var_os("BALANCER_TESTBED_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| compiled.into())
}

/// Fails the calling test with a clear message unless running as root: these
/// suites load BPF programs and create network namespaces. A skipped test would
/// be a silent lie, so this panics instead.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (CAP_BPF, CAP_NET_ADMIN) to load XDP programs and create \
             network namespaces; run it with `sudo -E cargo xtask test`"
        );
    }
}
