//! Loading, attaching, pinning and adopting the `balancer` XDP program.
//!
//! A gateway's data plane outlives its daemon: on attach the program's bpf_link
//! and every map are pinned under `/sys/fs/bpf/balancer/<iface>/`. A daemon that
//! starts (after an upgrade, a crash or `kill -9`) finds the pinned link and
//! *adopts* it: it opens the pinned maps and rebuilds its shadows from them,
//! without reloading the program, so traffic never stops.
//!
//! Minimum kernel: 5.10 (XDP bpf_link, mmapable arrays, `BPF_F_NO_COMMON_LRU`,
//! bounded loops). Tested on 6.1 and 6.18.

mod attach;
mod bpffs;
pub mod decap;
pub mod maps;
pub mod objects;

use std::{
    io,
    path::{Path, PathBuf},
};

pub use attach::XdpError;
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, links::PinnedLink},
};
use balancer_common::{
    DEFAULT_FLOW_SETS, DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS,
    DEFAULT_RING_SIZE, FLOW_WAYS, rings_entries, rings_len, vip_table_slots,
};
pub use bpffs::{BPFFS, default_pin_dir, ensure_mounted, is_on_bpffs};
use tracing::{info, warn};

use crate::{
    dataplane::maps::{BalancerMaps, MAP_NAMES, MapSource, MapsError},
    lb::maglev::is_prime,
};

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "balancer";
/// Pin name of the bpf_link attaching the program.
const LINK_PIN: &str = "link";
/// Pin name of the program.
const PROG_PIN: &str = "prog";

/// Errors of the data-plane loader.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A load option is out of range.
    #[error("invalid data-plane option: {0}")]
    InvalidOption(String),
    /// The object could not be parsed or its maps created.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// Loading, attaching or pinning a program failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// The interface does not exist (in this network namespace).
    #[error("interface {0:?} not found")]
    NoSuchInterface(String),
    /// A map problem.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// File-system work around the pins failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

/// Map sizes fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Maglev ring size M; must be prime.
    pub ring_size: u32,
    /// Number of VIPs.
    pub max_vips: u32,
    /// Number of backend slots (one per VIP membership); at most 65536.
    pub max_backends: u32,
    /// Concurrent connections the connection table is sized for. The table gets
    /// the power of two of 6-entry sets that keeps this many at or below 25%
    /// load, where a set rarely overflows (see docs/architecture.md).
    pub max_flows: u32,
    /// Client-affinity entries.
    pub max_affinity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_size: DEFAULT_RING_SIZE,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_flows: DEFAULT_FLOW_SETS / 4 * FLOW_WAYS as u32,
            max_affinity: DEFAULT_MAX_AFFINITY,
        }
    }
}

impl LoadOptions {
    /// Checks the options and returns the `RINGS` length they need.
    pub fn validate(&self) -> Result<u32> {
        let bad = |m: String| Err(DataplaneError::InvalidOption(m));
        if !is_prime(self.ring_size) || self.ring_size < 3 {
            return bad(format!(
                "ring size {} is not a prime >= 3 (try 65537)",
                self.ring_size
            ));
        }
        for (name, v, max) in [
            ("max_vips", self.max_vips, 1 << 16),
            ("max_backends", self.max_backends, 1 << 16),
            ("max_flows", self.max_flows, 1 << 26),
            ("max_affinity", self.max_affinity, 1 << 28),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} = {v} must be between 1 and {max}"));
            }
        }
        match rings_len(self.max_vips, self.ring_size) {
            // A BPF array's value area must stay below 4 GiB as well.
            Some(len) if (len as u64) * 4 < u32::MAX as u64 => Ok(len),
            _ => bad(format!(
                "{} VIPs x 2 halves x ring size {} does not fit one BPF array; \
                 lower max_vips or ring_size",
                self.max_vips, self.ring_size
            )),
        }
    }

    /// Sets of the connection table: the power of two that holds
    /// `max_flows` at 25% load.
    pub fn flow_sets(&self) -> u32 {
        let want = (self.max_flows as u64 * 4).div_ceil(FLOW_WAYS as u64);
        want.next_power_of_two().max(1) as u32
    }

    /// Bytes the maps reserve in the kernel, roughly (rings and connection
    /// table exactly; hash tables by key + value + 64 bytes per element).
    pub fn memory_estimate(&self) -> u64 {
        let rings = self.max_vips as u64 * 2 * self.ring_size as u64 * 4;
        let flows = self.flow_sets() as u64 * 64;
        let aff = self.max_affinity as u64 * (20 + 16 + 64);
        let backends = self.max_backends as u64 * (28 + 24 * 2);
        let vips = vip_table_slots(self.max_vips) as u64 * 32;
        rings + flows + aff + backends + vips
    }
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode; fall back to generic with a warning.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// An attachment to an interface.
#[derive(Debug)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Mode actually used, if this process attached it (unknown when adopted).
    pub mode: Option<AttachMode>,
    /// Whether an existing data plane was adopted rather than loaded.
    pub adopted: bool,
    _link: PinnedLink,
}

/// The loaded (or adopted) data plane.
pub struct Dataplane {
    /// The program and its attachment.
    pub programs: Programs,
    /// Its maps, with shadows.
    pub maps: BalancerMaps,
}

/// The program side of a data plane: the loaded object (when this process
/// loaded it) and the attachment (when attached or adopted).
pub struct Programs {
    ebpf: Option<Ebpf>,
    attachment: Option<Attachment>,
}

impl Programs {
    /// The attachment, if attached or adopted.
    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    /// The program, when this process loaded it (for `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> Option<&Xdp> {
        self.ebpf.as_ref()?.program(PROGRAM)?.try_into().ok()
    }
}

/// Lifts the memlock limit for kernels that still charge BPF memory to it
/// (before 5.11); harmless elsewhere.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        warn!("could not raise RLIMIT_MEMLOCK; on kernels before 5.11 map creation may fail");
    }
}

/// The program's globals that follow from the table sizes.
struct Masks {
    flow_sets: u32,
    vip_slots: u32,
}

impl Masks {
    fn of(opts: &LoadOptions) -> Self {
        Self {
            flow_sets: opts.flow_sets() - 1,
            vip_slots: vip_table_slots(opts.max_vips) - 1,
        }
    }
}

fn loader<'a>(opts: &'a LoadOptions, rings: u32, masks: &'a Masks) -> EbpfLoader<'a> {
    let mut l = EbpfLoader::new();
    l.override_global("RING_SIZE", &opts.ring_size, true)
        .override_global("FLOW_SET_MASK", &masks.flow_sets, true)
        .override_global("VIP_SLOT_MASK", &masks.vip_slots, true)
        .map_max_entries("FLOWS", opts.flow_sets())
        .map_max_entries("RINGS", rings_entries(rings))
        .map_max_entries("VIPS", vip_table_slots(opts.max_vips))
        .map_max_entries("VIP_STATS", opts.max_vips)
        .map_max_entries("BACKENDS", opts.max_backends)
        .map_max_entries("BACKEND_STATS", opts.max_backends)
        .map_max_entries("AFFINITY", opts.max_affinity);
    l
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DataplaneError + 'p {
    move |source| DataplaneError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Mounts bpffs if it is not mounted yet.
fn mount_bpffs() -> Result<()> {
    ensure_mounted().map_err(io_err("mounting bpffs at", Path::new(BPFFS)))
}

/// Every pin the balancer makes in its pin directory.
fn balancer_pins() -> Vec<&'static str> {
    let mut names = vec![LINK_PIN, PROG_PIN];
    names.extend_from_slice(MAP_NAMES);
    names
}

/// Makes `dir` a directory on bpffs without the pins `names`: only what we
/// pin is removed, never anything else, and nothing outside bpffs.
fn clear_pins(dir: &Path, names: &[&str]) -> Result<()> {
    bpffs::remove_pins(dir, names).map_err(io_err("removing pins in", dir))?;
    bpffs::require_bpffs(dir).map_err(io_err("pinning in", dir))?;
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))
}

/// Readies `dir` for the decap program's pins (its link and `DECAP_VIPS`),
/// removing only those.
fn empty_dir(dir: &Path) -> Result<()> {
    clear_pins(dir, &[LINK_PIN, "DECAP_VIPS"])
}

impl Dataplane {
    /// Loads the program and creates its maps without attaching or pinning
    /// anything: for `BPF_PROG_TEST_RUN` tests and benchmarks.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let rings = opts.validate()?;
        raise_memlock();
        let masks = Masks::of(opts);
        let mut ebpf = loader(opts, rings, &masks)
            .load(objects::BALANCER)
            .map_err(DataplaneError::Load)?;
        attach::load(&mut ebpf, PROGRAM)?;
        let maps = BalancerMaps::open(MapSource::Object(&mut ebpf))?;
        Ok(Self {
            programs: Programs {
                ebpf: Some(ebpf),
                attachment: None,
            },
            maps,
        })
    }

    /// Attaches the balancer to `iface`, or adopts the one already pinned in
    /// `pin_dir`. A fresh load pins the link, the program and every map there.
    pub fn attach(
        iface: &str,
        mode: AttachMode,
        opts: &LoadOptions,
        pin_dir: &Path,
    ) -> Result<Self> {
        mount_bpffs()?;
        let link_pin = pin_dir.join(LINK_PIN);
        if link_pin.exists() {
            return Self::adopt(iface, pin_dir);
        }
        let rings = opts.validate()?;
        raise_memlock();
        if pin_dir.exists() {
            // Maps left without a link are from a data plane that was never
            // completely attached; start clean.
            warn!(dir = %pin_dir.display(), "removing stale pins without a link");
        }
        clear_pins(pin_dir, &balancer_pins())?;

        let result = Self::load_and_attach(iface, mode, opts, rings, pin_dir);
        if result.is_err() {
            // Nothing half-applied: no pins, no attachment.
            let _ = bpffs::remove_pins(pin_dir, &balancer_pins());
        }
        result
    }

    fn load_and_attach(
        iface: &str,
        mode: AttachMode,
        opts: &LoadOptions,
        rings: u32,
        pin_dir: &Path,
    ) -> Result<Self> {
        let pins: Vec<(&str, PathBuf)> = MAP_NAMES.iter().map(|n| (*n, pin_dir.join(n))).collect();
        let masks = Masks::of(opts);
        let mut l = loader(opts, rings, &masks);
        for (name, path) in &pins {
            l.map_pin_path(name, path.as_path());
        }
        let mut ebpf = l.load(objects::BALANCER).map_err(DataplaneError::Load)?;
        attach::load(&mut ebpf, PROGRAM)?;
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(DataplaneError::NoSuchInterface(iface.to_string()));
        }
        let (link_id, used) = attach::attach(&mut ebpf, PROGRAM, iface, mode)?;
        let pinned = attach::pin_link(&mut ebpf, PROGRAM, link_id, &pin_dir.join(LINK_PIN))?;
        attach::pin_program(&mut ebpf, PROGRAM, &pin_dir.join(PROG_PIN))?;
        let maps = BalancerMaps::open(MapSource::Object(&mut ebpf))?;
        info!(%iface, mode = ?used, pins = %pin_dir.display(), "balancer attached");
        Ok(Self {
            programs: Programs {
                ebpf: Some(ebpf),
                attachment: Some(Attachment {
                    iface: iface.to_string(),
                    pin_dir: pin_dir.to_path_buf(),
                    mode: Some(used),
                    adopted: false,
                    _link: pinned,
                }),
            },
            maps,
        })
    }

    /// Adopts the data plane pinned in `pin_dir` without touching traffic.
    pub fn adopt(iface: &str, pin_dir: &Path) -> Result<Self> {
        let link = attach::open_link(&pin_dir.join(LINK_PIN))?;
        let maps = BalancerMaps::open(MapSource::Pins(pin_dir))?;
        info!(%iface, pins = %pin_dir.display(), "adopted running balancer");
        Ok(Self {
            programs: Programs {
                ebpf: None,
                attachment: Some(Attachment {
                    iface: iface.to_string(),
                    pin_dir: pin_dir.to_path_buf(),
                    mode: None,
                    adopted: true,
                    _link: link,
                }),
            },
            maps,
        })
    }

    /// Detaches the data plane pinned in `pin_dir` and removes its pins (and
    /// the directory, if nothing else is in it). Flows through it stop being
    /// balanced at once. Refuses, removing nothing, unless `pin_dir` is on
    /// bpffs.
    pub fn detach(pin_dir: &Path) -> Result<()> {
        // Removing the last reference to the link (its pin) detaches it.
        bpffs::remove_pins(pin_dir, &balancer_pins()).map_err(io_err("removing pins in", pin_dir))
    }

    /// The program, when this process loaded it (for `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> Option<&Xdp> {
        self.programs.program()
    }
}
