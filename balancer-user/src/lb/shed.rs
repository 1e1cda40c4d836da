//! Shedding a VIP's tier in XDP: the share of new connections the data path
//! refuses (drops before placement; established connections are never
//! touched), set from the pool's saturation by the VIP's tier, or by hand.
//!
//! Sheddable VIPs go first: a sheddable VIP is refused fully before a
//! standard one is refused at all; a critical one never is.

use balancer_common::SHED_ALL;
use tracing::info;

use super::{LoadBalancer, Result, VipId};
use crate::route::tier::Tier;

/// Saturations (the pool's mean load, 0..1) where a sheddable VIP starts to
/// be shed and is shed fully.
pub const SHEDDABLE: (f64, f64) = (0.8, 0.95);
/// The same for a standard VIP: only once sheddable ones are shed fully.
pub const STANDARD: (f64, f64) = (0.95, 1.0);

/// The refused share, in 65536ths, of a VIP of `tier` at `saturation`.
pub fn share_for(tier: Tier, saturation: f64) -> u16 {
    let (start, full) = match tier {
        Tier::Critical => return 0,
        Tier::Standard => STANDARD,
        Tier::Sheddable => SHEDDABLE,
    };
    if !saturation.is_finite() || saturation <= start {
        return 0;
    }
    if saturation >= full {
        return SHED_ALL;
    }
    (((saturation - start) / (full - start)) * SHED_ALL as f64) as u16
}

/// A share as a percentage, for people.
pub fn percent(share: u16) -> f64 {
    if share == SHED_ALL {
        100.0
    } else {
        share as f64 * 100.0 / 65536.0
    }
}

/// A percentage as a share (100 refuses every new connection).
pub fn share_of_percent(p: f64) -> u16 {
    if p >= 100.0 {
        SHED_ALL
    } else if p > 0.0 {
        ((p / 100.0) * 65536.0) as u16
    } else {
        0
    }
}

impl LoadBalancer {
    /// Gives a VIP a tier (its shedding follows at the next saturation
    /// reading).
    pub fn set_tier(&mut self, id: &VipId, tier: Tier) -> Result<()> {
        let st = self.vip_mut(id)?;
        if st.spec.tier != tier {
            st.spec.tier = tier;
            info!(vip = %id, %tier, "VIP tier set");
            self.changed();
        }
        Ok(())
    }

    /// Sets what a VIP's refused TCP connections get: a dropped SYN or a
    /// RST from XDP.
    pub fn set_refusal(&mut self, id: &VipId, refuse: super::Refusal) -> Result<()> {
        let st = self.vips.get(id).ok_or(super::LbError::NoSuchVip(*id))?;
        if st.spec.refuse == refuse {
            return Ok(());
        }
        let mut spec = st.spec.clone();
        spec.refuse = refuse;
        let mut meta = st.meta;
        meta.flags = super::vips::vip_flags(&spec);
        self.maps.vips.insert(&id.key(), &meta)?;
        let st = self.vip_mut(id)?;
        st.meta = meta;
        st.spec = spec;
        self.changed();
        info!(vip = %id, refuse = refuse.label(), "VIP refusal set");
        Ok(())
    }

    /// Refuses `share` (65536ths) of a VIP's new connections in XDP.
    pub fn set_shed(&mut self, id: &VipId, share: u16) -> Result<()> {
        let st = self.vips.get(id).ok_or(super::LbError::NoSuchVip(*id))?;
        if st.meta.shed_share == share {
            return Ok(());
        }
        let mut meta = st.meta;
        meta.shed_share = share;
        self.maps.vips.insert(&id.key(), &meta)?;
        self.vip_mut(id)?.meta = meta;
        self.changed();
        info!(vip = %id, percent = percent(share), "VIP shedding new connections");
        Ok(())
    }

    /// Sets a VIP's shedding from its pool's `saturation` and its tier;
    /// returns the share now refused.
    pub fn shed_for_load(&mut self, id: &VipId, saturation: f64) -> Result<u16> {
        let tier = self
            .vips
            .get(id)
            .ok_or(super::LbError::NoSuchVip(*id))?
            .spec
            .tier;
        let share = share_for(tier, saturation);
        self.set_shed(id, share)?;
        Ok(share)
    }

    /// The share of a VIP's new connections refused now.
    pub fn shed_share(&self, id: &VipId) -> Option<u16> {
        self.vips.get(id).map(|v| v.meta.shed_share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheddable_goes_first_and_critical_never() {
        let table: &[(&str, Tier, f64, u16)] = &[
            ("idle pool", Tier::Sheddable, 0.5, 0),
            ("at the sheddable start", Tier::Sheddable, 0.8, 0),
            ("half way", Tier::Sheddable, 0.875, SHED_ALL / 2),
            ("sheddable fully shed", Tier::Sheddable, 0.95, SHED_ALL),
            ("standard not yet", Tier::Standard, 0.95, 0),
            ("standard at saturation", Tier::Standard, 1.0, SHED_ALL),
            ("critical at saturation", Tier::Critical, 1.0, 0),
            ("no reading", Tier::Sheddable, f64::NAN, 0),
        ];
        for (what, tier, s, want) in table {
            let got = share_for(*tier, *s);
            assert!(got.abs_diff(*want) <= 1, "{what}: {got} against {want}");
        }
        assert_eq!(percent(SHED_ALL), 100.0);
        assert_eq!(share_of_percent(100.0), SHED_ALL);
        assert_eq!(share_of_percent(50.0), 32768);
        assert_eq!(share_of_percent(-1.0), 0);
    }
}
