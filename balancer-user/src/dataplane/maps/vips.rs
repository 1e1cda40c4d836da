//! `VIPS`, the VIP table, with its shadow.

use std::{collections::BTreeMap, mem::size_of};

use aya::maps::{HashMap, Map, MapData, MapError};
use balancer_common::{VipKey, VipMeta};

use super::{Result, kernel};

/// `VIPS` with its shadow.
pub struct VipMap {
    map: HashMap<MapData, VipKey, VipMeta>,
    shadow: BTreeMap<VipKeyOrd, VipMeta>,
    max: u32,
}

/// [`VipKey`] ordered by its bytes, for the shadow map.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct VipKeyOrd([u8; size_of::<VipKey>()]);

impl From<&VipKey> for VipKeyOrd {
    fn from(k: &VipKey) -> Self {
        let mut b = [0u8; size_of::<VipKey>()];
        b.copy_from_slice(bytemuck::bytes_of(k));
        Self(b)
    }
}

impl VipKeyOrd {
    fn key(&self) -> VipKey {
        bytemuck::pod_read_unaligned(&self.0)
    }
}

impl VipMap {
    /// Wraps `VIPS` and reads its shadow back from the kernel.
    pub(super) fn new(map: Map, max: u32) -> Result<Self> {
        let map: HashMap<MapData, VipKey, VipMeta> =
            HashMap::try_from(map).map_err(kernel("VIPS"))?;
        let mut vips = Self {
            map,
            shadow: BTreeMap::new(),
            max,
        };
        vips.load_shadow()?;
        Ok(vips)
    }

    /// Inserts or replaces a VIP. Replacing is how the ring generation flips: a
    /// hash-map update swaps the whole value at once for concurrent readers.
    pub fn insert(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        self.map.insert(key, meta, 0).map_err(kernel("VIPS"))?;
        self.shadow.insert(key.into(), *meta);
        Ok(())
    }

    /// Removes a VIP.
    pub fn remove(&mut self, key: &VipKey) -> Result<()> {
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(kernel("VIPS")(e)),
        }
        self.shadow.remove(&key.into());
        Ok(())
    }

    /// The shadow's entry for a VIP.
    pub fn get(&self, key: &VipKey) -> Option<&VipMeta> {
        self.shadow.get(&key.into())
    }

    /// All VIPs in the shadow.
    pub fn iter(&self) -> impl Iterator<Item = (VipKey, VipMeta)> + '_ {
        self.shadow.iter().map(|(k, v)| (k.key(), *v))
    }

    /// Map capacity.
    pub fn capacity(&self) -> u32 {
        self.max
    }

    fn load_shadow(&mut self) -> Result<()> {
        self.shadow.clear();
        for item in self.map.iter() {
            let (k, v) = item.map_err(kernel("VIPS"))?;
            self.shadow.insert((&k).into(), v);
        }
        Ok(())
    }

    pub(super) fn verify(&self, out: &mut Vec<String>) -> Result<()> {
        let mut kernel_side = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(kernel("VIPS"))?;
            kernel_side.insert(VipKeyOrd::from(&k), v);
        }
        if kernel_side != self.shadow {
            out.push(format!(
                "VIPS: kernel has {} entries, shadow {} (or values differ)",
                kernel_side.len(),
                self.shadow.len()
            ));
        }
        Ok(())
    }
}
