//! The backend-side `decap` XDP program: strips the balancer's IPIP / IP6IP6
//! header on hosts whose kernel has no ipip or ip6_tunnel module, so the inner
//! packet reaches the server bound to the VIP.
//!
//! Minimum kernel: 5.10. The alternative on a backend with the modules is the
//! kernel's own `tunl0` / `ip6tnl0` fallback devices (docs/operations.md).

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use balancer_common::{AddrKey, GlobalStats};
use tracing::warn;

use crate::{
    dataplane::maps::MapsError,
    dataplane::{AttachMode, DataplaneError, objects},
    net::{addr_words, family},
};

const PROGRAM: &str = "decap";

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Maps(MapsError::Kernel { name, source })
}

/// A loaded decap program.
pub struct Decap {
    ebpf: Ebpf,
    vips: HashMap<MapData, AddrKey, u32>,
    stats: PerCpuArray<MapData, GlobalStats>,
    _link: Option<PinnedLink>,
}

impl Decap {
    /// Loads the program without attaching it (tests, benchmarks).
    pub fn load() -> Result<Self> {
        Self::load_inner(None)
    }

    fn load_inner(pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let vips_pin = pin_dir.map(|d| d.join("DECAP_VIPS"));
        if let Some(p) = &vips_pin {
            loader.map_pin_path("DECAP_VIPS", p.as_path());
        }
        let mut ebpf = loader.load(objects::DECAP).map_err(DataplaneError::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: PROGRAM,
                source,
            })?;
        prog.load().map_err(|source| DataplaneError::Program {
            name: PROGRAM,
            source,
        })?;
        let vips = ebpf
            .take_map("DECAP_VIPS")
            .ok_or(DataplaneError::MissingProgram("DECAP_VIPS"))?;
        let stats = ebpf
            .take_map("DECAP_STATS")
            .ok_or(DataplaneError::MissingProgram("DECAP_STATS"))?;
        Ok(Self {
            vips: HashMap::try_from(vips).map_err(map_err("DECAP_VIPS"))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err("DECAP_STATS"))?,
            ebpf,
            _link: None,
        })
    }

    /// Loads and attaches to `iface`. With `pin_dir`, the link and the VIP map
    /// are pinned there so the program outlives this process; an earlier
    /// program pinned there is replaced.
    pub fn attach(iface: &str, mode: AttachMode, pin_dir: Option<&Path>) -> Result<Self> {
        if let Some(dir) = pin_dir {
            crate::dataplane::ensure_mounted().map_err(|source| DataplaneError::Io {
                what: "mounting bpffs at",
                path: crate::dataplane::BPFFS.into(),
                source,
            })?;
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|source| DataplaneError::Io {
                    what: "removing",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                what: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut me = Self::load_inner(pin_dir)?;
        let prog: &mut Xdp = me
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: PROGRAM,
                source,
            })?;
        let attach_err = |source| DataplaneError::Attach {
            iface: iface.to_string(),
            source,
        };
        let id = match mode {
            AttachMode::Driver => match prog.attach(iface, XdpMode::Driver) {
                Ok(id) => id,
                Err(e) => {
                    warn!(%iface, error = %e, "driver-mode XDP failed; using generic mode");
                    prog.attach(iface, XdpMode::Skb).map_err(attach_err)?
                }
            },
            AttachMode::Generic => prog.attach(iface, XdpMode::Skb).map_err(attach_err)?,
        };
        if let Some(dir) = pin_dir {
            let link = prog
                .take_link(id)
                .map_err(|source| DataplaneError::Program {
                    name: PROGRAM,
                    source,
                })?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| DataplaneError::Pin {
                    path: dir.join("link"),
                    message: e.to_string(),
                })?;
            let pinned = fd.pin(dir.join("link")).map_err(|e| DataplaneError::Pin {
                path: dir.join("link"),
                message: e.to_string(),
            })?;
            me._link = Some(pinned);
        }
        Ok(me)
    }

    /// Opens the VIP map of a decap program pinned in `pin_dir` by another
    /// process, to change its VIPs.
    pub fn pinned_vips(pin_dir: &Path) -> Result<HashMap<MapData, AddrKey, u32>> {
        let data = MapData::from_pin(pin_dir.join("DECAP_VIPS")).map_err(map_err("DECAP_VIPS"))?;
        let map = aya::maps::Map::from_map_data(data).map_err(map_err("DECAP_VIPS"))?;
        HashMap::try_from(map).map_err(map_err("DECAP_VIPS"))
    }

    /// Accepts tunnelled packets whose inner destination is `vip`.
    pub fn add_vip(&mut self, vip: IpAddr) -> Result<()> {
        self.vips
            .insert(key(vip), 1, 0)
            .map_err(map_err("DECAP_VIPS"))
    }

    /// Stops accepting `vip`.
    pub fn remove_vip(&mut self, vip: IpAddr) -> Result<()> {
        match self.vips.remove(&key(vip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("DECAP_VIPS")(e)),
        }
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<GlobalStats> {
        let v = self.stats.get(&0, 0).map_err(map_err("DECAP_STATS"))?;
        let mut sum = GlobalStats::default();
        for s in v.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// The program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> Option<&Xdp> {
        self.ebpf.program(PROGRAM)?.try_into().ok()
    }
}

/// The decap map key of an address.
pub fn key(vip: IpAddr) -> AddrKey {
    AddrKey {
        addr: addr_words(vip),
        family: family(vip) as u32,
    }
}
