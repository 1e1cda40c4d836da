//! The one API through which VIPs and backends are changed.
//!
//! [`LoadBalancer`] owns the data plane's maps and a model of what they should
//! hold: VIPs, each with its pool of backends, weights, drain state and next-hop
//! MAC. Every mutation validates its input first, then applies the change to the
//! maps in an order that keeps every packet on a consistent view:
//!
//! - a ring is rewritten only when its contents change, into the inactive half,
//!   then published with a single `VIPS` update (see [`crate::dataplane::maps::RingMap`]);
//! - a removed backend leaves the ring first; its slot is deactivated (which is
//!   what moves its established flows elsewhere) one grace period later, so no
//!   packet holding the old ring finds a dead slot;
//! - a drained backend (weight 0) leaves the ring but stays active, so its
//!   established connections stay put.
//!
//! Backend slots are per (VIP, backend) membership: removing a backend from one
//! VIP moves only that VIP's flows, even when the same server serves others.
//!
//! The engine is one type spread over files by concern: its model of each VIP
//! and backend (`state.rs`), VIPs (`vips.rs`), backends (`backends.rs`),
//! next hops (`nexthop.rs`), backend slots (`slots.rs`), ring rebuilds, flips
//! and grace periods (`ring.rs`), reports and counters (`report.rs`), and
//! restoring from a snapshot (`reconcile.rs`).

mod backends;
mod error;
pub mod maglev;
mod nexthop;
mod reconcile;
mod report;
mod ring;
mod settings;
pub mod shed;
mod slots;
mod snapshot;
mod spec;
mod state;
mod types;
mod view;
mod vips;

pub use self::{
    error::LbError,
    ring::GRACE,
    settings::DataplaneSettings,
    snapshot::{BackendRecord, Snapshot, SnapshotError, VipRecord},
    spec::{
        BackendSpec, Refusal, VipSpec, validate_addr, validate_affinity, validate_weight, vip_tier,
    },
    types::{BackendInfo, DownSource, Mode, Proto, VipId, VipInfo},
    view::{PoolView, Pools},
};

use std::{collections::BTreeMap, sync::Arc};

use balancer_common::VipFilter;

use self::state::VipState;
use crate::dataplane::maps::BalancerMaps;

type Result<T> = std::result::Result<T, LbError>;

/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Longest accepted client-affinity timeout.
pub const MAX_AFFINITY_SECS: u32 = 7 * 24 * 3600;

/// The load balancer: validated changes to VIPs and backends, applied to the
/// data plane's maps.
pub struct LoadBalancer {
    maps: BalancerMaps,
    vips: BTreeMap<VipId, VipState>,
    settings: DataplaneSettings,
    /// Bumped on every change to the persisted state.
    generation: u64,
    /// The read-only view, republished after every change.
    view: Arc<Pools>,
}

impl LoadBalancer {
    /// Wraps freshly created maps: writes default settings and no VIPs.
    pub fn new(maps: BalancerMaps, settings: DataplaneSettings) -> Result<Self> {
        let mut lb = Self::empty(maps, settings);
        lb.set_settings(settings)?;
        lb.maps.filter.set(0, VipFilter::default())?;
        lb.publish();
        Ok(lb)
    }

    fn empty(maps: BalancerMaps, settings: DataplaneSettings) -> Self {
        Self {
            maps,
            vips: BTreeMap::new(),
            settings,
            generation: 0,
            view: Arc::new(Pools::default()),
        }
    }

    /// The state to persist.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            settings: self.settings,
            vips: self.vips.values().map(VipState::record).collect(),
        }
    }

    /// The maps (for statistics and inspection).
    pub fn maps(&self) -> &BalancerMaps {
        &self.maps
    }

    /// Mutable maps (tests seed the connection tables through this).
    pub fn maps_mut(&mut self) -> &mut BalancerMaps {
        &mut self.maps
    }

    /// Current settings.
    pub fn settings(&self) -> DataplaneSettings {
        self.settings
    }

    /// Applies data-plane settings.
    pub fn set_settings(&mut self, settings: DataplaneSettings) -> Result<()> {
        let cfg = settings.validate()?;
        self.maps.config.set(0, cfg)?;
        if self.settings != settings {
            self.settings = settings;
            self.changed();
        }
        Ok(())
    }

    /// The read-only view, for readers that must not wait for this engine.
    pub fn view(&self) -> Arc<Pools> {
        self.view.clone()
    }

    /// The generation of the persisted state: it changes whenever
    /// [`Self::snapshot`] would.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a change and republishes the view. Called after every change
    /// to the state (ring flips included), never while a change is half done.
    fn changed(&mut self) {
        self.generation += 1;
        self.publish();
    }

    fn publish(&self) {
        self.view.store(PoolView {
            generation: self.generation,
            vips: self.vips.values().map(VipState::info).collect(),
        });
    }
}
