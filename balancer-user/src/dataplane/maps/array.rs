//! Array maps the control plane writes (`BACKENDS`, `CONFIG`,
//! `VIP_FILTER`), each with a full shadow.

use aya::maps::{Array, Map, MapData};

use super::{MapsError, Result, kernel};

/// An array map with a full shadow (`BACKENDS`, `CONFIG`, `VIP_FILTER`).
pub struct ShadowArray<T: aya::Pod + PartialEq + Default> {
    name: &'static str,
    map: Array<MapData, T>,
    shadow: Vec<T>,
}

impl<T: aya::Pod + PartialEq + Default> ShadowArray<T> {
    pub(super) fn new(name: &'static str, map: Map) -> Result<Self> {
        let map: Array<MapData, T> = Array::try_from(map).map_err(kernel(name))?;
        let len = map.len();
        let mut a = Self {
            name,
            map,
            shadow: Vec::with_capacity(len as usize),
        };
        for i in 0..len {
            let v = a.map.get(&i, 0).map_err(kernel(name))?;
            a.shadow.push(v);
        }
        Ok(a)
    }

    /// Writes one element.
    pub fn set(&mut self, index: u32, value: T) -> Result<()> {
        let size = self.len();
        let slot = self
            .shadow
            .get_mut(index as usize)
            .ok_or(MapsError::OutOfRange {
                name: self.name,
                index,
                size,
            })?;
        self.map.set(index, value, 0).map_err(kernel(self.name))?;
        *slot = value;
        Ok(())
    }

    /// The shadow's element.
    pub fn get(&self, index: u32) -> Option<&T> {
        self.shadow.get(index as usize)
    }

    /// Number of elements.
    pub fn len(&self) -> u32 {
        self.shadow.len() as u32
    }

    /// Whether the array has no elements (never, for our maps).
    pub fn is_empty(&self) -> bool {
        self.shadow.is_empty()
    }

    pub(super) fn verify(&self, out: &mut Vec<String>) -> Result<()> {
        for (i, want) in self.shadow.iter().enumerate() {
            let got = self.map.get(&(i as u32), 0).map_err(kernel(self.name))?;
            if got != *want {
                out.push(format!("{}[{i}]: kernel and shadow differ", self.name));
            }
        }
        Ok(())
    }
}
