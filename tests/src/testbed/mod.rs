//! A gateway, its clients and its backends, each in its own network namespace,
//! all on one bridge (itself in a namespace, so nothing touches the host).
//!
//! ```text
//!   client c1 .10 ─┐                      ┌─ b1 .100  HTTP on VIP, decap XDP
//!   client c2 .11 ─┤── br0 (ns <p>-sw) ───┼─ b2 .101
//!   gateway gw .2 ─┘   10.77.0.0/24       └─ ...
//! ```
//!
//! Clients route the VIP (10.77.100.1) via the gateway; the gateway's XDP
//! program tunnels each connection to a backend, which strips the tunnel with
//! the `decap` program and answers the client directly (DSR).
//!
//! Everything created is removed by [`Testbed::down`], which also runs on drop,
//! so a failing test cleans up too. [`Testbed::sweep`] removes leftovers of
//! crashed runs.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use anyhow::{Context, Result, bail};
use balancer::{api::client::Client, dataplane::AttachMode, dataplane::decap::Decap, net::MacAddr};

mod servers;

use crate::{
    netns::{self, exec_in, ip, ip_in, sysctl_in},
    patience,
};

/// The VIP every testbed serves.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
/// The VIP's port.
pub const VIP_PORT: u16 = 80;
/// The gateway's address.
pub const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// L3 MTU of the gateway and backend links (room for the tunnel header).
pub const BACKEND_MTU: u32 = 1600;
/// Prefix of every testbed's namespaces.
pub const PREFIX: &str = "baltb";

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Unique name; namespaces are `<name>-gw`, `<name>-c1`, `<name>-b1`, ...
    pub name: String,
    /// Number of clients.
    pub clients: usize,
    /// Number of backends.
    pub backends: usize,
    /// The binary that serves HTTP on backends (`testbed serve`).
    pub server_bin: PathBuf,
    /// How backends strip the tunnel.
    pub decap: DecapMode,
    /// How backends emulate inference (their names are set per backend).
    pub emulator: crate::server::EmulatorConfig,
    /// What each backend runs instead of `testbed serve` (program and
    /// arguments, one per backend; it must serve HTTP on port 80 of any
    /// address), e.g. `balancer emulate` with a hardware class.
    pub backend_commands: Option<Vec<Vec<String>>>,
}

/// How backends strip the balancer's tunnel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapMode {
    /// The `decap` XDP program (works on kernels without tunnel modules).
    Xdp,
    /// The kernel's own `ipip` / `ip6_tunnel` fallback devices.
    Kernel,
}

impl Spec {
    /// A spec with a name unique to this process.
    pub fn unique(clients: usize, backends: usize, server_bin: impl Into<PathBuf>) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self {
            name: format!(
                "{PREFIX}{}{}",
                std::process::id() % 100_000,
                (b'a' + (n % 26) as u8) as char
            ),
            clients,
            backends,
            server_bin: server_bin.into(),
            decap: DecapMode::Xdp,
            emulator: crate::server::EmulatorConfig::default(),
            backend_commands: None,
        }
    }
}

/// One host of the testbed.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name (`gw`, `c1`, `b1`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// MAC of its `eth0`.
    pub mac: MacAddr,
}

/// A running testbed.
pub struct Testbed {
    /// What it was built from.
    pub spec: Spec,
    /// The namespace holding the bridge.
    pub switch_ns: String,
    /// The gateway.
    pub gateway: Host,
    /// Clients.
    pub clients: Vec<Host>,
    /// Backends.
    pub backends: Vec<Host>,
    servers: Vec<Option<Child>>,
    daemon: Option<Child>,
    keep: bool,
}

/// Finds the `balancer` binary: `$BALANCER_BIN`, or next to the running
/// executable's target directory (`target/<profile>/balancer`).
pub fn balancer_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BALANCER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let cand = dir.join("balancer");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "the balancer binary was not found near {}; build it first (`cargo build -p balancer-user`; \
         `cargo xtask test` does) or set BALANCER_BIN",
        exe.display()
    )
}

/// Starts `balancer run --config config`, appending its output to `log`.
pub fn spawn_daemon(config: &Path, log: &Path) -> Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    std::process::Command::new(balancer_bin()?)
        .args(["run", "--config"])
        .arg(config)
        .env("BALANCER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting balancer run")
}

/// Runs the `balancer` CLI against the daemon on `socket`; returns stdout.
pub fn balancer_cli(socket: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(balancer_bin()?)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("running the balancer CLI")?;
    if !out.status.success() {
        bail!(
            "balancer {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_of(ns: &str, dev: &str) -> Result<MacAddr> {
    let out = ip_in(ns, &["-o", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .context("no link/ether in `ip link show`")?;
    Ok(mac.parse()?)
}

impl Testbed {
    /// Builds the namespaces, links, addresses and routes, attaches `decap` to
    /// every backend and starts their HTTP servers. The gateway gets no XDP
    /// program: that is the test's (or the daemon's) job.
    pub fn up(spec: Spec) -> Result<Self> {
        let switch_ns = format!("{}-sw", spec.name);
        let mut tb = Self {
            gateway: Host {
                name: "gw".into(),
                ns: format!("{}-gw", spec.name),
                addr: GW_ADDR,
                mac: MacAddr::default(),
            },
            clients: (0..spec.clients)
                .map(|i| Host {
                    name: format!("c{}", i + 1),
                    ns: format!("{}-c{}", spec.name, i + 1),
                    addr: Ipv4Addr::new(10, 77, 0, 10 + i as u8),
                    mac: MacAddr::default(),
                })
                .collect(),
            backends: (0..spec.backends)
                .map(|i| Host {
                    name: format!("b{}", i + 1),
                    ns: format!("{}-b{}", spec.name, i + 1),
                    addr: Ipv4Addr::new(10, 77, 0, 100 + i as u8),
                    mac: MacAddr::default(),
                })
                .collect(),
            spec,
            switch_ns,
            servers: Vec::new(),
            daemon: None,
            keep: false,
        };
        if let Err(e) = tb.build() {
            tb.down();
            return Err(e);
        }
        Ok(tb)
    }

    fn build(&mut self) -> Result<()> {
        if self.spec.backends > 100 || self.spec.clients > 80 {
            bail!("at most 80 clients and 100 backends");
        }
        let sw = self.switch_ns.clone();
        ip(&["netns", "add", &sw])?;
        ip_in(&sw, &["link", "set", "lo", "up"])?;
        ip_in(&sw, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(
            &sw,
            &["link", "set", "br0", "mtu", &BACKEND_MTU.to_string(), "up"],
        )?;

        let mtu = BACKEND_MTU.to_string();
        let hosts: Vec<(Host, bool)> = std::iter::once((self.gateway.clone(), false))
            .chain(self.clients.iter().map(|h| (h.clone(), true)))
            .chain(self.backends.iter().map(|h| (h.clone(), false)))
            .collect();
        for (h, is_client) in &hosts {
            ip(&["netns", "add", &h.ns])?;
            ip_in(&h.ns, &["link", "set", "lo", "up"])?;
            ip_in(
                &sw,
                &[
                    "link", "add", &h.name, "type", "veth", "peer", "name", "eth0", "netns", &h.ns,
                ],
            )?;
            ip_in(
                &sw,
                &["link", "set", &h.name, "mtu", &mtu, "master", "br0", "up"],
            )?;
            let host_mtu = if *is_client { "1500" } else { &mtu };
            ip_in(&h.ns, &["link", "set", "eth0", "mtu", host_mtu, "up"])?;
            ip_in(
                &h.ns,
                &["addr", "add", &format!("{}/24", h.addr), "dev", "eth0"],
            )?;
            sysctl_in(&h.ns, "net.ipv4.conf.all.rp_filter", "0")?;
            sysctl_in(&h.ns, "net.ipv4.conf.eth0.rp_filter", "0")?;
            if *is_client {
                // XDP on the gateway sees these frames before any checksum or
                // segmentation offload is resolved: send them complete.
                exec_in(
                    &h.ns,
                    "ethtool",
                    &["-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
                )?;
                ip_in(
                    &h.ns,
                    &[
                        "route",
                        "add",
                        &format!("{VIP}/32"),
                        "via",
                        &GW_ADDR.to_string(),
                    ],
                )?;
            }
        }
        // XDP_TX on a veth only delivers if the peer runs NAPI, which takes an
        // XDP program (GRO alone did not do it here): give the gateway's peer
        // a pass-through one (decap with no VIPs passes everything).
        exec_in(&sw, "ethtool", &["-K", "gw", "gro", "on"])?;
        let pin = PathBuf::from(balancer::dataplane::BPFFS)
            .join("balancer")
            .join(&sw)
            .join("gw-peer");
        netns::run_in(&sw, move || -> Result<()> {
            Decap::attach("gw", AttachMode::Driver, Some(&pin))?;
            Ok(())
        })??;
        self.gateway.mac = mac_of(&self.gateway.ns, "eth0")?;
        for c in &mut self.clients {
            c.mac = mac_of(&c.ns, "eth0")?;
        }
        for i in 0..self.backends.len() {
            let b = self.backends[i].clone();
            self.backends[i].mac = mac_of(&b.ns, "eth0")?;
            // DSR: the VIP lives on lo and is never announced on the wire.
            ip_in(&b.ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            sysctl_in(&b.ns, "net.ipv4.conf.all.arp_ignore", "1")?;
            sysctl_in(&b.ns, "net.ipv4.conf.all.arp_announce", "2")?;
            match self.spec.decap {
                DecapMode::Xdp => {
                    let pin = self.decap_pin(&b);
                    netns::run_in(&b.ns, move || -> Result<()> {
                        let mut d = Decap::attach("eth0", AttachMode::Driver, Some(&pin))?;
                        d.add_vip(VIP.into())?;
                        // The gateway's (default) tunnel source prefix.
                        d.allow_source(Ipv4Addr::new(172, 16, 0, 0).into(), 16)?;
                        Ok(())
                    })??;
                }
                DecapMode::Kernel => {
                    // The fallback tunnel devices exist in every namespace once
                    // the modules are loaded; they take packets from any source.
                    for dev in ["tunl0", "ip6tnl0"] {
                        ip_in(&b.ns, &["link", "set", dev, "up"]).with_context(|| {
                            format!(
                                "{dev} missing: the kernel needs the ipip and ip6_tunnel modules"
                            )
                        })?;
                    }
                    sysctl_in(&b.ns, "net.ipv4.conf.tunl0.rp_filter", "0")?;
                }
            }
            self.start_server(i, std::time::Duration::ZERO)?;
        }
        self.wait_serving()?;
        Ok(())
    }

    fn decap_pin(&self, b: &Host) -> PathBuf {
        PathBuf::from(balancer::dataplane::BPFFS)
            .join("balancer")
            .join(&b.ns)
            .join("decap")
    }

    /// Scratch directory of this testbed (config, state file).
    pub fn dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("balancer-{}", self.spec.name))
    }

    /// Admin socket of this testbed's daemon.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from("/run/balancer").join(format!("{}.sock", self.spec.name))
    }

    /// A client of this testbed's daemon.
    pub fn client(&self) -> Client {
        Client::new(self.socket())
    }

    /// The daemon's `/metrics` text, read inside the gateway namespace from
    /// the address [`Testbed::config`] gives it.
    pub fn daemon_metrics(&self) -> Result<String> {
        netns::run_in(&self.gateway.ns, || -> Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect((GW_ADDR, 9100))?;
            let deadline = Some(patience(std::time::Duration::from_secs(10)));
            s.set_read_timeout(deadline)?;
            s.set_write_timeout(deadline)?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.take(16 << 20).read_to_string(&mut out)?;
            Ok(out)
        })?
        .context("reading the daemon's /metrics")
    }

    /// The daemon configuration for this testbed: the gateway's `eth0`, and
    /// `vips` (TOML `[[vip]]` tables) appended. With `weights`, the standard
    /// VIP with every backend at those weights is written instead.
    pub fn config(&self, vips: &str) -> String {
        format!(
            r#"[daemon]
iface = "eth0"
netns = "{ns}"
socket = "{sock}"
metrics = "{gw}:9100"
state_file = "{state}"

[dataplane]
max_vips = 8
max_backends = 256
max_flows = 65536
max_affinity = 4096
mtu = {mtu}

{vips}"#,
            ns = self.gateway.ns,
            sock = self.socket().display(),
            gw = GW_ADDR,
            state = self.dir().join("state.json").display(),
            mtu = BACKEND_MTU,
        )
    }

    /// `[[vip]]` TOML for the testbed VIP with every backend at `weights`
    /// (next hops resolved by the daemon).
    pub fn vip_toml(&self, weights: &[u32], affinity: Option<u32>) -> String {
        let mut s = format!("[[vip]]\nvip = \"{VIP}:{VIP_PORT}/tcp\"\n");
        if let Some(a) = affinity {
            s.push_str(&format!("affinity_secs = {a}\n"));
        }
        for (b, w) in self.backends.iter().zip(weights) {
            s.push_str(&format!(
                "\n[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n",
                b.addr
            ));
        }
        s
    }

    /// Writes `config` and starts `balancer run` with it; returns once the
    /// daemon answers and every backend's next hop is resolved.
    pub fn start_daemon(&mut self, config: &str) -> Result<()> {
        std::fs::create_dir_all(self.dir())?;
        let path = self.dir().join("balancer.toml");
        std::fs::write(&path, config)?;
        self.daemon = Some(spawn_daemon(&path, &self.dir().join("daemon.log"))?);
        self.wait_ready(patience(std::time::Duration::from_secs(20)))
    }

    /// Waits until the daemon answers and no backend is down, for `timeout`
    /// as given (scale it with [`patience`]).
    pub fn wait_ready(&mut self, timeout: std::time::Duration) -> Result<()> {
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = std::time::Instant::now() + timeout;
        let mut last = String::from("no answer");
        while std::time::Instant::now() < deadline {
            if let Some(c) = &mut self.daemon
                && let Some(status) = c.try_wait()?
            {
                bail!("balancer run exited ({status}); log: {}", self.daemon_log());
            }
            match rt.block_on(client.status()) {
                Ok(s) if s.down.is_empty() => return Ok(()),
                Ok(s) => last = format!("down: {:?}", s.down),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!(
            "daemon not ready after {timeout:?} ({last}); log: {}",
            self.daemon_log()
        )
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("daemon.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (as `kill -9` would) and reaps it.
    pub fn kill9_daemon(&mut self) -> Result<()> {
        let mut c = self.daemon.take().context("no daemon running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// Starts the daemon again with the config already written.
    pub fn restart_daemon(&mut self) -> Result<()> {
        let config = std::fs::read_to_string(self.dir().join("balancer.toml"))?;
        self.start_daemon(&config)
    }

    /// The VIP as a socket address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP, VIP_PORT))
    }

    /// Pin directory of the balancer on the gateway.
    pub fn gateway_pins(&self) -> PathBuf {
        balancer::dataplane::default_pin_dir("eth0", Some(&self.gateway.ns))
    }

    /// Keep everything when this value is dropped (`testbed up`).
    pub fn persist(mut self) {
        self.keep = true;
        if let Some(d) = self.daemon.take() {
            std::mem::forget(d);
        }
        for mut c in self.servers.drain(..).flatten() {
            // Detach: the server keeps running in its namespace.
            let _ = c.try_wait();
            std::mem::forget(c);
        }
    }

    /// Removes everything this testbed created.
    pub fn down(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir_all(self.dir());
        for c in self.servers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.servers.clear();
        Self::sweep_prefix(&self.spec.name);
    }

    /// Removes every testbed (leftovers of crashed runs included).
    pub fn sweep() {
        Self::sweep_prefix(PREFIX);
    }

    fn sweep_prefix(prefix: &str) {
        for ns in netns::list_with_prefix(prefix) {
            // Processes still inside (servers, daemons) go first.
            if let Ok(out) = ip(&["netns", "pids", &ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let pins = Path::new(balancer::dataplane::BPFFS)
                .join("balancer")
                .join(&ns);
            let _ = std::fs::remove_dir_all(&pins);
            let _ = ip(&["netns", "del", &ns]);
        }
        // Sockets and scratch directories of daemons run by testbeds.
        for (dir, pat) in [
            (PathBuf::from("/run/balancer"), prefix.to_string()),
            (std::env::temp_dir(), format!("balancer-{prefix}")),
        ] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&pat) {
                        let p = e.path();
                        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                    }
                }
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.keep {
            self.down();
        }
    }
}
