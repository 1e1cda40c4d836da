//! Where maps come from (a freshly loaded object or an earlier daemon's
//! pins), and the check that a map has this build's layout.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use super::{MapsError, Result, kernel};

/// Where the maps come from.
pub enum MapSource<'a> {
    /// A freshly loaded object (maps are taken out of it).
    Object(&'a mut Ebpf),
    /// A directory of pins left by an earlier daemon.
    Pins(&'a Path),
}

impl MapSource<'_> {
    fn take(&mut self, name: &'static str) -> Result<Map> {
        match self {
            MapSource::Object(ebpf) => ebpf.take_map(name).ok_or_else(|| MapsError::Missing {
                name,
                place: "the eBPF object".into(),
            }),
            MapSource::Pins(dir) => {
                let path: PathBuf = dir.join(name);
                if !path.exists() {
                    return Err(MapsError::Missing {
                        name,
                        place: dir.display().to_string(),
                    });
                }
                let data = MapData::from_pin(&path).map_err(kernel(name))?;
                Map::from_map_data(data).map_err(kernel(name))
            }
        }
    }
}

/// Checks a map's key and value sizes against this build's types.
fn check_layout(name: &'static str, data: &MapData, key: usize, value: usize) -> Result<u32> {
    let info = data.info().map_err(kernel(name))?;
    for (what, got, want) in [
        ("key size", info.key_size(), key as u32),
        ("value size", info.value_size(), value as u32),
    ] {
        if got != want {
            return Err(MapsError::Layout {
                name,
                what,
                got,
                want,
            });
        }
    }
    Ok(info.max_entries())
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
        Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

/// Takes a map, checks its layout and returns it with its size.
pub(super) fn open(
    src: &mut MapSource<'_>,
    name: &'static str,
    key: usize,
    value: usize,
) -> Result<(Map, u32)> {
    let map = src.take(name)?;
    let size = check_layout(name, map_data(&map), key, value)?;
    Ok((map, size))
}
