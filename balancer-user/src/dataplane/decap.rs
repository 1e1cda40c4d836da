//! The backend-side `decap` XDP program: strips the balancer's IPIP / IP6IP6
//! header on hosts whose kernel has no ipip or ip6_tunnel module, so the inner
//! packet reaches the server bound to the VIP.
//!
//! Minimum kernel: 5.10. The alternative on a backend with the modules is the
//! kernel's own `tunl0` / `ip6tnl0` fallback devices (docs/operations.md).

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{Xdp, links::PinnedLink},
};
use balancer_common::{AddrKey, DECAP_MAX_SOURCES, GlobalStats, SourcePrefix};

use super::{AttachMode, DataplaneError, attach, empty_dir, maps::MapsError, mount_bpffs, objects};
use crate::net::{addr_words, family};

const PROGRAM: &str = "decap";

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Maps(MapsError::Kernel { name, source })
}

/// Takes the map `name` out of the loaded object.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| {
        DataplaneError::Maps(MapsError::Missing {
            name,
            place: "the eBPF object".into(),
        })
    })
}

/// A loaded decap program.
pub struct Decap {
    ebpf: Ebpf,
    vips: HashMap<MapData, AddrKey, u32>,
    sources: Array<MapData, SourcePrefix>,
    /// Shadow of `sources`, in map order.
    allowed: Vec<SourcePrefix>,
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
        attach::load(&mut ebpf, PROGRAM)?;
        let vips = take_map(&mut ebpf, "DECAP_VIPS")?;
        let sources = take_map(&mut ebpf, "DECAP_SOURCES")?;
        let stats = take_map(&mut ebpf, "DECAP_STATS")?;
        Ok(Self {
            vips: HashMap::try_from(vips).map_err(map_err("DECAP_VIPS"))?,
            sources: Array::try_from(sources).map_err(map_err("DECAP_SOURCES"))?,
            allowed: Vec::new(),
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
            mount_bpffs()?;
            empty_dir(dir)?;
        }
        let mut me = Self::load_inner(pin_dir)?;
        let (id, _) = attach::attach(&mut me.ebpf, PROGRAM, iface, mode)?;
        if let Some(dir) = pin_dir {
            me._link = Some(attach::pin_link(
                &mut me.ebpf,
                PROGRAM,
                id,
                &dir.join("link"),
            )?);
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

    /// Accepts tunnelled packets whose outer source lies in `net/len` (the
    /// gateways' tunnel source prefix). Until one is allowed, every tunnelled
    /// packet for a VIP is dropped and counted (`drop_decap_source`): anyone
    /// who can reach a backend could otherwise inject packets with a spoofed
    /// inner source.
    pub fn allow_source(&mut self, net: IpAddr, len: u8) -> Result<()> {
        let p = source_prefix(net, len)?;
        if self.allowed.contains(&p) {
            return Ok(());
        }
        let at = self.allowed.len() as u32;
        if at >= DECAP_MAX_SOURCES {
            return Err(DataplaneError::InvalidOption(format!(
                "decap accepts at most {DECAP_MAX_SOURCES} tunnel source prefixes"
            )));
        }
        self.sources
            .set(at, p, 0)
            .map_err(map_err("DECAP_SOURCES"))?;
        self.allowed.push(p);
        Ok(())
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

/// A prefix as the decap program matches it: host bits must be zero.
fn source_prefix(net: IpAddr, len: u8) -> Result<SourcePrefix> {
    let bits: u32 = if net.is_ipv4() { 32 } else { 128 };
    if len as u32 > bits {
        return Err(DataplaneError::InvalidOption(format!(
            "tunnel source prefix {net}/{len}: length beyond {bits}"
        )));
    }
    let addr = addr_words(net);
    let words = if net.is_ipv4() { 1 } else { 4 };
    let mut mask = [0u32; 4];
    for (i, m) in mask.iter_mut().enumerate().take(words) {
        // Bits of this word inside the prefix, most significant first.
        let inside = (len as i32 - 32 * i as i32).clamp(0, 32) as u32;
        let host_order = if inside == 0 {
            0
        } else {
            u32::MAX << (32 - inside)
        };
        *m = host_order.to_be();
    }
    if (0..4).any(|i| addr[i] & !mask[i] != 0) {
        return Err(DataplaneError::InvalidOption(format!(
            "tunnel source prefix {net}/{len}: host bits set"
        )));
    }
    Ok(SourcePrefix {
        addr,
        mask,
        family: family(net) as u32,
    })
}

/// The decap map key of an address.
pub fn key(vip: IpAddr) -> AddrKey {
    AddrKey {
        addr: addr_words(vip),
        family: family(vip) as u32,
    }
}
