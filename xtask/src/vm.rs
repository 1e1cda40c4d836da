//! `cargo xtask vm-test`: every test suite inside a QEMU guest running another
//! kernel (by default Debian 12's 6.1 cloud kernel), so verifier and helper
//! differences show up before a gateway meets them.
//!
//! 1. The kernel package comes from apt (`apt-get download`) and is cached
//!    under `target/vm/`; its modules come with it.
//! 2. An initramfs is assembled: busybox, `ip`, `ethtool` and
//!    `redis-server` with the shared libraries they and the test binaries
//!    need, the modules (veth, bridge, ipip, ip6_tunnel and their
//!    dependencies), and the project's files at fixed guest paths of their
//!    own under [`GUEST_ROOT`] (test binaries, the `balancer` and `testbed`
//!    binaries, the shared samples), so that where the checkout lives on the
//!    host never matters. The suites find them through environment variables
//!    the init exports.
//! 3. The init mounts proc, sys, devtmpfs, tmpfs (`/tmp`, `/run`), bpffs and
//!    cgroup2, loads the modules, runs each test binary between markers, and
//!    powers off.
//! 4. QEMU boots it (KVM when usable, else TCG) under a timeout; the console is
//!    streamed with a progress line and kept in `target/vm/console.log`; the
//!    markers decide the verdict, and failing tests are named.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{self, cargo, output, root};

/// Modules the suites need in the guest.
const MODULES: &[&str] = &["veth", "bridge", "ipip", "ip6_tunnel"];
/// Host programs copied into the guest (with their libraries).
const PROGRAMS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/ethtool",
    // The cache suites' shared L2.
    "/usr/bin/redis-server",
];

/// Where the project's files live in the guest. Nothing is mounted over it,
/// whatever the host path of the checkout (a checkout under `/tmp` would be
/// hidden by the guest's tmpfs if its files kept their host paths).
pub const GUEST_ROOT: &str = "/balancer";
/// What the init mounts: no staged file may live below one of these.
const GUEST_MOUNTS: &[(&str, &str)] = &[
    ("proc", "/proc"),
    ("sysfs", "/sys"),
    ("devtmpfs", "/dev"),
    ("tmpfs", "/tmp"),
    ("tmpfs", "/run"),
];
/// Test binaries that run on the host only, and why: see `build_tests`.
const HOST_ONLY: &[&str] = &["openai_client"];
/// Folders of the shared third-party samples the suites read in the guest.
const SHARED_SUBDIRS: &[&str] = &["prometheus", "traces/arrivals"];

/// Which kernel to boot.
pub enum Kernel {
    /// Debian's `linux-image-cloud-amd64` of the host's release, via apt.
    Debian,
    /// A kernel image given by path (modules must be built in).
    Image(PathBuf),
}

/// Options of a run.
pub struct Options {
    /// The kernel.
    pub kernel: Kernel,
    /// Give up after this long.
    pub timeout: Duration,
    /// Scale of load sizes in the suites (software emulation is slow).
    pub scale: f64,
    /// Only test binaries whose name contains this.
    pub filter: Option<String>,
}

fn vm_dir() -> PathBuf {
    util::target_dir().join("vm")
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads and unpacks the Debian cloud kernel; returns (vmlinuz, modules
/// root, version).
fn debian_kernel() -> Result<(PathBuf, PathBuf, String)> {
    let dir = vm_dir().join("kernel");
    std::fs::create_dir_all(&dir)?;
    let deps = sh(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .context("apt knows no linux-image-cloud-amd64; run `apt-get update`")?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let unpacked = dir.join(&version);
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.exists() {
        util::step(&format!("vm: downloading {pkg}"));
        sh(Command::new("apt-get")
            .arg("download")
            .arg(&pkg)
            .current_dir(&dir))
        .or_else(|_| {
            sh(Command::new("apt-get").arg("update"))?;
            sh(Command::new("apt-get")
                .arg("download")
                .arg(&pkg)
                .current_dir(&dir))
        })
        .with_context(|| format!("apt-get download {pkg}"))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with(&pkg) && n.to_string_lossy().ends_with(".deb")
                })
            })
            .context("downloaded .deb not found")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        sh(Command::new("depmod")
            .arg("-b")
            .arg(&unpacked)
            .arg(&version))?;
    }
    Ok((vmlinuz, unpacked, version))
}

/// Modules in `names` and everything they depend on, as paths relative to
/// `lib/modules/<version>/`.
fn module_closure(root: &Path, version: &str, names: &[&str]) -> Result<Vec<String>> {
    let base = root.join("lib/modules").join(version);
    let dep = std::fs::read_to_string(base.join("modules.dep")).context("modules.dep")?;
    let mut map = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((m, deps)) = line.split_once(':') {
            map.insert(
                m.to_string(),
                deps.split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            );
        }
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for n in names {
        let key = map
            .keys()
            .find(|k| {
                let file = k.rsplit('/').next().unwrap_or(k);
                file == format!("{n}.ko") || file.starts_with(&format!("{n}.ko."))
            })
            .with_context(|| format!("module {n} not in this kernel"))?;
        todo.push(key.clone());
    }
    while let Some(m) = todo.pop() {
        if out.insert(m.clone()) {
            todo.extend(map.get(&m).cloned().unwrap_or_default());
        }
    }
    Ok(out.into_iter().collect())
}

/// Shared libraries a binary needs (from ldd), absolute paths.
fn libs(bin: &Path) -> Vec<PathBuf> {
    let Some(out) = output(Command::new("ldd").arg(bin)) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn copy_into(stage: &Path, src: &Path) -> Result<()> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = stage.join(rel);
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// Copies `src` to the guest path `dst` inside `stage`. Executables lose
/// their debug info on the way (symbols stay, so backtraces still name
/// functions): the guest's root is a tmpfs of half its memory, and debug info
/// is most of a test binary (about 120 of 130 MB), so fifteen of them no
/// longer fit ("Initramfs unpacking failed: write error").
fn copy_to(stage: &Path, src: &Path, dst: &Path) -> Result<()> {
    let dst = stage.join(dst.strip_prefix("/").unwrap_or(dst));
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)?;
    }
    if is_elf(src) {
        let stripped = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(&dst)
            .status()
            .is_ok_and(|s| s.success());
        if stripped {
            return Ok(());
        }
    }
    std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// Builds the test binaries (and the binaries they run); returns test
/// executables with a short name each.
fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    util::build_bins(false)?;
    util::step("vm: building test binaries");
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "balancer-ebpf",
            "--features",
            "balancer-tests/vm",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json_lite::parse(line) else {
            continue;
        };
        if let Some((name, exe)) = v {
            tests.push((name, exe));
        }
    }
    tests.sort();
    tests.dedup();
    // The guest has no Python; the emulator's answers the `openai` client
    // checks do not depend on the kernel.
    tests.retain(|(name, _)| !HOST_ONLY.contains(&name.as_str()));
    Ok(tests)
}

/// Minimal extraction of test executables from cargo's JSON messages, to keep
/// xtask free of dependencies that a fresh machine would have to build first.
mod serde_json_lite {
    use std::path::PathBuf;

    fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        let pat = format!("\"{key}\":\"");
        let i = line.find(&pat)? + pat.len();
        let rest = &line[i..];
        let j = rest.find('"')?;
        Some(&rest[..j])
    }

    /// `Some((target name, executable))` for a test artifact line.
    pub fn parse(line: &str) -> Result<Option<(String, PathBuf)>, ()> {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            return Ok(None);
        }
        // A test harness is an artifact built with the test profile (the
        // target's own "test" flag only says it *may* have tests).
        let profile = line
            .find("\"profile\":{")
            .map(|i| &line[i..])
            .and_then(|p| p.find('}').map(|j| &p[..j]))
            .unwrap_or("");
        if !profile.contains("\"test\":true") {
            return Ok(None);
        }
        let exe = field(line, "executable").ok_or(())?;
        let name = line
            .find("\"target\":{")
            .and_then(|i| field(&line[i..], "name"))
            .ok_or(())?;
        let kind_lib = line.contains("\"kind\":[\"lib\"]");
        let name = if kind_lib {
            format!("{name}-unit")
        } else {
            name.to_string()
        };
        Ok(Some((name, PathBuf::from(exe))))
    }
}

/// The project's files in the guest: what is copied where, and what the
/// init exports so that the suites find them.
struct Layout {
    /// (host path, guest path) of every staged project file.
    files: Vec<(PathBuf, PathBuf)>,
    /// Test binaries to run: (short name, guest path).
    tests: Vec<(String, PathBuf)>,
    /// Variables the init exports, each naming a guest path.
    env: Vec<(&'static str, PathBuf)>,
}

/// Places the test binaries, the `balancer` and `testbed` binaries of
/// `bin_dir`, the shared samples (`shared`: their root and the files below
/// it) and the fleet scenarios (`scenarios`: likewise) under [`GUEST_ROOT`].
fn layout(
    tests: &[(String, PathBuf)],
    bin_dir: &Path,
    shared: Option<(&Path, &[PathBuf])>,
    scenarios: Option<(&Path, &[PathBuf])>,
) -> Result<Layout> {
    let guest = Path::new(GUEST_ROOT);
    let mut l = Layout {
        files: Vec::new(),
        tests: Vec::new(),
        env: Vec::new(),
    };
    for (name, exe) in tests {
        // The file name carries cargo's hash, so two targets never collide.
        let file = exe
            .file_name()
            .with_context(|| format!("test binary {} has no file name", exe.display()))?;
        let dst = guest.join("tests").join(file);
        l.files.push((exe.clone(), dst.clone()));
        l.tests.push((name.clone(), dst));
    }
    for (bin, var) in [
        ("balancer", "BALANCER_BIN"),
        ("testbed", "BALANCER_TESTBED_BIN"),
    ] {
        let dst = guest.join("bin").join(bin);
        l.files.push((bin_dir.join(bin), dst.clone()));
        l.env.push((var, dst));
    }
    // The plots' font: the guest has no /usr/share/fonts.
    let font = Path::new(crate::setup::PLOT_FONT);
    if font.is_file() {
        let dst = guest.join("fonts").join("DejaVuSans.ttf");
        l.files.push((font.to_path_buf(), dst.clone()));
        l.env.push(("BALANCER_FONT", dst));
    }
    for (tree, sub, var) in [
        (shared, "shared", "BALANCER_SHARED_DATA"),
        (scenarios, "scenarios", "BALANCER_SCENARIOS"),
    ] {
        let Some((root_dir, files)) = tree else {
            continue;
        };
        let dst_root = guest.join(sub);
        for f in files {
            let rel = f
                .strip_prefix(root_dir)
                .with_context(|| format!("{} is not below {}", f.display(), root_dir.display()))?;
            l.files.push((f.clone(), dst_root.join(rel)));
        }
        l.env.push((var, dst_root));
    }
    Ok(l)
}

/// Every file below `dir` (the fleet scenarios and their profiles).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The shared samples on the host: `$BALANCER_SHARED_DATA`, else
/// `../shared/data` beside the checkout (as the suites look for them).
fn shared_data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BALANCER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("..").join("shared").join("data"));
    std::fs::canonicalize(dir).ok()
}

/// The files of [`SHARED_SUBDIRS`] below `dir`.
fn shared_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in SHARED_SUBDIRS {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

fn init_script(l: &Layout, modules: &[String], scale: f64) -> String {
    let mut s = String::from("#!/bin/sh\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n");
    for (fs, at) in GUEST_MOUNTS {
        s.push_str(&format!("mount -t {fs} {fs} {at}\n"));
    }
    s.push_str(
        r#"mkdir -p /sys/fs/bpf /sys/fs/cgroup /run/netns /var
ln -sf /run /var/run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "@@BALANCER-INIT $(uname -r)"
"#,
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/$(uname -r)/{m} 2>/dev/null\n"
        ));
    }
    s.push_str(&format!(
        "export BALANCER_TEST_SCALE={scale}\nexport RUST_BACKTRACE=1\n"
    ));
    for (var, path) in &l.env {
        s.push_str(&format!("export {var}={}\n", path.display()));
    }
    // Tests start in a scratch folder of the guest's own.
    s.push_str("cd /tmp\n");
    for (name, exe) in &l.tests {
        s.push_str(&format!(
            "echo \"@@BALANCER-TEST-BEGIN {name}\"\n{} --test-threads=1 2>&1\necho \"@@BALANCER-TEST-END {name} $?\"\n",
            exe.display()
        ));
    }
    s.push_str("echo @@BALANCER-ALL-DONE\npoweroff -f\n");
    s
}

fn build_initramfs(
    tests: &[(String, PathBuf)],
    modroot: Option<(&Path, &str)>,
    scale: f64,
) -> Result<PathBuf> {
    util::step("vm: assembling the initramfs");
    let stage = vm_dir().join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "var",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox missing (apt-get install busybox-static; cargo xtask setup does)")?;
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    let applets = sh(Command::new(busybox).arg("--list"))?;
    for a in applets.lines().filter(|a| !["ip", "ethtool"].contains(a)) {
        let _ = std::os::unix::fs::symlink("busybox", stage.join("bin").join(a));
    }
    let shared = shared_data_dir().map(|d| {
        let files = shared_files(&d);
        (d, files)
    });
    let scenario_dir = root().join("tests").join("scenarios");
    let scenarios = files_below(&scenario_dir);
    let layout = layout(
        tests,
        &util::target_dir().join("debug"),
        shared.as_ref().map(|(d, f)| (d.as_path(), f.as_slice())),
        Some((scenario_dir.as_path(), scenarios.as_slice())),
    )?;
    // System programs keep their paths; the project's files go where the
    // layout says.
    let mut all_libs = BTreeSet::new();
    for p in PROGRAMS {
        copy_into(&stage, Path::new(p))?;
        all_libs.extend(libs(Path::new(p)));
    }
    for (src, dst) in &layout.files {
        copy_to(&stage, src, dst)?;
        all_libs.extend(libs(src));
    }
    for l in &all_libs {
        copy_into(&stage, &std::fs::canonicalize(l).unwrap_or(l.clone()))?;
        // Keep the name the loader asks for.
        let rel = l.strip_prefix("/").unwrap_or(l);
        if !stage.join(rel).exists() {
            copy_into(&stage, l)?;
        }
    }
    let mut modules = Vec::new();
    if let Some((root_dir, version)) = modroot {
        let list = module_closure(root_dir, version, MODULES)?;
        // Dependencies first: insmod does not resolve them.
        let ordered = order_modules(root_dir, version, &list)?;
        for m in &ordered {
            let src = root_dir.join("lib/modules").join(version).join(m);
            let dst = stage.join("lib/modules").join(version).join(m);
            std::fs::create_dir_all(dst.parent().context("module dir")?)?;
            std::fs::copy(&src, &dst)?;
        }
        modules = ordered;
    }
    std::fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    let init = stage.join("init");
    std::fs::write(&init, init_script(&layout, &modules, scale))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let out = vm_dir().join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            stage.display(),
            out.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed (cpio and gzip needed)");
    }
    Ok(out)
}

/// Orders modules so each comes after its dependencies.
fn order_modules(root_dir: &Path, version: &str, list: &[String]) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(
        root_dir
            .join("lib/modules")
            .join(version)
            .join("modules.dep"),
    )?;
    let mut deps = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(
                m.to_string(),
                d.split_whitespace().map(String::from).collect::<Vec<_>>(),
            );
        }
    }
    let mut out: Vec<String> = Vec::new();
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        out: &mut Vec<String>,
    ) {
        if out.iter().any(|x| x == m) {
            return;
        }
        for d in deps.get(m).cloned().unwrap_or_default() {
            visit(&d, deps, out);
        }
        out.push(m.to_string());
    }
    for m in list {
        visit(m, &deps, &mut out);
    }
    Ok(out)
}

/// What the console said.
#[derive(Default)]
struct Verdict {
    booted: Option<String>,
    ended: Vec<(String, i32)>,
    failed_tests: Vec<String>,
    passed_tests: usize,
    all_done: bool,
    panic: Option<String>,
}

/// Runs the suites in a VM.
pub fn run(opts: Options) -> Result<()> {
    let t0 = Instant::now();
    let (vmlinuz, modroot) = match &opts.kernel {
        Kernel::Debian => {
            let (k, root_dir, version) = debian_kernel()?;
            (k, Some((root_dir, version)))
        }
        Kernel::Image(p) => {
            if !p.exists() {
                bail!("kernel image {} does not exist", p.display());
            }
            (p.clone(), None)
        }
    };
    let mut tests = build_tests()?;
    if let Some(f) = &opts.filter {
        tests.retain(|(n, _)| n.contains(f.as_str()));
        if tests.is_empty() {
            bail!("no test binary matches {f:?}");
        }
    }
    let initrd = build_initramfs(
        &tests,
        modroot.as_ref().map(|(r, v)| (r.as_path(), v.as_str())),
        opts.scale,
    )?;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mut v = if kvm {
        match boot(&vmlinuz, &initrd, &tests, &opts, true)? {
            // KVM present but unusable (the guest never reached init): retry
            // under TCG.
            b if b.verdict.booted.is_none() && b.timed_out.is_none() => {
                util::step("vm: KVM did not boot the guest; falling back to TCG");
                boot(&vmlinuz, &initrd, &tests, &opts, false)?
            }
            b => b,
        }
    } else {
        boot(&vmlinuz, &initrd, &tests, &opts, false)?
    };
    let log_path = vm_dir().join("console.log");
    let tail_text = v.tail.join("\n");
    let current = std::mem::take(&mut v.current);
    let timed_out = v.timed_out;
    let v = v.verdict;
    let elapsed = t0.elapsed();
    if let Some(why) = timed_out {
        bail!(
            "vm-test: {why} (after {elapsed:?}{}); console log: {}\n--- last console lines ---\n{tail_text}",
            if current.is_empty() {
                String::new()
            } else {
                format!(", while running {current}")
            },
            log_path.display()
        );
    }
    if v.booted.is_none() {
        bail!(
            "vm-test: the kernel failed to boot (init never ran); console log: {}\n--- last console lines ---\n{tail_text}",
            log_path.display()
        );
    }
    if let Some(p) = &v.panic {
        bail!(
            "vm-test: the guest kernel reported {p:?}; console log: {}",
            log_path.display()
        );
    }
    let failed_bins: Vec<&String> = v
        .ended
        .iter()
        .filter(|(_, rc)| *rc != 0)
        .map(|(n, _)| n)
        .collect();
    if !v.all_done || v.ended.len() != tests.len() || !failed_bins.is_empty() {
        let mut msg = format!(
            "vm-test on {}: {} of {} test binaries failed",
            v.booted.unwrap_or_default(),
            failed_bins.len() + tests.len().saturating_sub(v.ended.len()),
            tests.len()
        );
        if !v.failed_tests.is_empty() {
            msg.push_str(&format!("; failing tests: {}", v.failed_tests.join(", ")));
        } else if !failed_bins.is_empty() {
            msg.push_str(&format!("; failing binaries: {failed_bins:?}"));
        }
        if !v.all_done {
            msg.push_str(&format!(
                "; the run did not complete (crashed while running {current})"
            ));
        }
        bail!("{msg}; console log: {}", log_path.display());
    }
    eprintln!(
        "vm-test: {} tests in {} binaries passed on kernel {} in {:.0}s",
        v.passed_tests,
        tests.len(),
        v.booted.unwrap_or_default(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// One boot of the guest, until it powers off or the time is up.
struct Boot {
    verdict: Verdict,
    tail: Vec<String>,
    current: String,
    timed_out: Option<&'static str>,
}

fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    tests: &[(String, PathBuf)],
    opts: &Options,
    kvm: bool,
) -> Result<Boot> {
    util::step(&format!(
        "vm: booting {} ({} test binaries, {}; timeout {:?})",
        vmlinuz.display(),
        tests.len(),
        if kvm { "KVM" } else { "TCG" },
        opts.timeout
    ));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-m",
        "6144",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"]);
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "starting qemu-system-x86_64 (apt-get install qemu-system-x86; cargo xtask setup does)",
        )?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {l}")).is_err() {
                break;
            }
        }
    });

    let log_path = vm_dir().join("console.log");
    let mut log = std::fs::File::create(&log_path)?;
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] vm: {msg}",
    )?);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb.set_message("booting");
    let boot_deadline = Instant::now() + Duration::from_secs(120);
    let deadline = Instant::now() + opts.timeout;
    let mut v = Verdict::default();
    let mut tail: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut timed_out = None;
    loop {
        let now = Instant::now();
        if v.booted.is_none() && now > boot_deadline {
            timed_out = Some("the kernel did not reach init within 120 s");
            break;
        }
        if now > deadline {
            timed_out = Some("the suites did not finish in time");
            break;
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                use std::io::Write;
                let line = line.replace('\r', "");
                let _ = writeln!(log, "{line}");
                tail.push(line.clone());
                if tail.len() > 40 {
                    tail.remove(0);
                }
                // Firmware escape codes may precede a marker on its line.
                let after = |m: &str| line.find(m).map(|i| line[i + m.len()..].trim().to_string());
                if let Some(k) = after("@@BALANCER-INIT ") {
                    v.booted = Some(k.to_string());
                    pb.set_message(format!("kernel {k} booted"));
                } else if let Some(n) = after("@@BALANCER-TEST-BEGIN ") {
                    current = n.clone();
                    pb.set_message(format!("running {n}"));
                } else if let Some(rest) = after("@@BALANCER-TEST-END ") {
                    let mut it = rest.rsplitn(2, ' ');
                    let rc: i32 = it.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
                    let name = it.next().unwrap_or_default().to_string();
                    pb.suspend(|| {
                        eprintln!("  vm: {name}: {}", if rc == 0 { "ok" } else { "FAILED" })
                    });
                    v.ended.push((name, rc));
                } else if line.contains("@@BALANCER-ALL-DONE") {
                    v.all_done = true;
                } else if line.starts_with("test ") && line.ends_with(" ... FAILED") {
                    let t = line
                        .trim_start_matches("test ")
                        .trim_end_matches(" ... FAILED");
                    v.failed_tests.push(format!("{current}::{t}"));
                    pb.suspend(|| eprintln!("  vm: {line}"));
                } else if line.starts_with("test ") && line.ends_with(" ... ok") {
                    v.passed_tests += 1;
                } else if line.contains("Kernel panic")
                    || line.contains("BUG:")
                    || line.contains("Oops")
                {
                    v.panic.get_or_insert(line.clone());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    pb.finish_and_clear();
    if timed_out.is_some() {
        let _ = child.kill();
    }
    let _ = child.wait();
    Ok(Boot {
        verdict: v,
        tail,
        current,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(p: &Path, dir: &str) -> bool {
        p.starts_with(dir)
    }

    /// Wherever the checkout lives, the init names only staged guest paths,
    /// and none of them lies below a mount that would hide it.
    #[test]
    fn the_init_names_only_guest_paths_no_mount_hides() {
        for checkout in [
            "/tmp/clone",
            "/run/user/0/balancer",
            "/proc/x",
            "/home/dev/src/balancer",
            "/",
        ] {
            let root_dir = Path::new(checkout);
            let target = root_dir.join("target/debug");
            let tests = vec![
                ("attach".to_string(), target.join("deps/attach-0123abcd")),
                (
                    "balancer-unit".to_string(),
                    target.join("deps/balancer-4567ef"),
                ),
            ];
            let shared_root = root_dir.join("../shared/data");
            let shared = vec![shared_root.join("prometheus/vllm.txt")];
            let scenario_root = root_dir.join("tests/scenarios");
            let scenarios = vec![scenario_root.join("profiles/p.toml")];
            let l = layout(
                &tests,
                &target,
                Some((&shared_root, &shared)),
                Some((&scenario_root, &scenarios)),
            )
            .unwrap();
            let script = init_script(&l, &["kernel/net/veth.ko".into()], 0.25);

            let staged: BTreeSet<&Path> = l.files.iter().map(|(_, g)| g.as_path()).collect();
            for g in &staged {
                assert!(
                    g.starts_with(GUEST_ROOT),
                    "{checkout}: {} outside",
                    g.display()
                );
                for (_, m) in GUEST_MOUNTS {
                    assert!(!under(g, m), "{checkout}: {} is hidden by {m}", g.display());
                }
            }
            for (_, t) in &l.tests {
                assert!(
                    staged.contains(t.as_path()),
                    "{checkout}: test {t:?} not staged"
                );
                assert!(script.contains(&t.display().to_string()));
            }
            for (var, p) in &l.env {
                assert!(
                    staged.iter().any(|g| g.starts_with(p)),
                    "{checkout}: {var}={} names nothing staged",
                    p.display()
                );
                assert!(script.contains(&format!("export {var}={}", p.display())));
            }
            // Every project path the script names is staged; no host path
            // of the checkout appears at all.
            for word in script.split_whitespace() {
                let w = word.trim_matches(|c| c == '"' || c == '\'');
                let w = w.split_once('=').map_or(w, |(_, v)| v);
                if w.starts_with(GUEST_ROOT) {
                    let p = Path::new(w);
                    assert!(
                        staged.iter().any(|g| g.starts_with(p)),
                        "{checkout}: {w} not staged"
                    );
                }
                if checkout != "/" {
                    assert!(
                        !w.starts_with(checkout),
                        "{checkout}: host path {w} in the init"
                    );
                }
            }
        }
    }

    #[test]
    fn a_test_binary_without_a_file_name_is_an_error() {
        let err = layout(
            &[("x".into(), PathBuf::from("/"))],
            Path::new("/t"),
            None,
            None,
        );
        assert!(err.is_err());
    }
}
