//! LRU tables the data path writes (`AFFINITY`): read and delete, and
//! seeded by tests and benchmarks.

use aya::maps::{HashMap, Map, MapData, MapError};

use super::{Result, kernel};

/// A data-path-written LRU table (`AFFINITY`): tests and benchmarks may seed
/// and delete entries.
pub struct LruTable<K: aya::Pod, V: aya::Pod> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    capacity: u32,
}

impl<K: aya::Pod, V: aya::Pod> LruTable<K, V> {
    /// Wraps the table `name` of `capacity` entries.
    pub(super) fn new(name: &'static str, map: Map, capacity: u32) -> Result<Self> {
        Ok(Self {
            name,
            map: HashMap::try_from(map).map_err(kernel(name))?,
            capacity,
        })
    }

    /// Looks up an entry.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(kernel(self.name)(e)),
        }
    }

    /// Inserts an entry (tests and benchmarks seed tables this way).
    pub fn insert(&mut self, key: &K, value: &V) -> Result<()> {
        self.map.insert(key, value, 0).map_err(kernel(self.name))
    }

    /// Deletes an entry; absent entries are fine.
    pub fn remove(&mut self, key: &K) -> Result<()> {
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(kernel(self.name)(e)),
        }
    }

    /// Number of live entries (walks the table).
    pub fn count(&self) -> usize {
        self.map.keys().filter(|k| k.is_ok()).count()
    }

    /// All entries (walks the table).
    pub fn entries(&self) -> Vec<(K, V)> {
        self.map.iter().filter_map(|e| e.ok()).collect()
    }

    /// Table capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}
