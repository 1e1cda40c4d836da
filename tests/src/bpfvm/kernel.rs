//! [`KernelMaps`]: a [`MapBackend`] over a loaded program's kernel maps.
//!
//! The interpreter only ever reads through it (`BPF_MAP_LOOKUP_ELEM`), so a
//! benchmark can count the instructions of a path on exactly the maps the
//! kernel runs it on without disturbing them. Needs the privileges that
//! reading BPF maps needs (root, or CAP_BPF).

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{MapFd, MapInfo},
    programs::ProgramInfo,
};

use super::{MapBackend, Program, VmError};

/// `BPF_MAP_LOOKUP_ELEM`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
/// Per-CPU map types: `PERCPU_HASH`, `PERCPU_ARRAY`, `LRU_PERCPU_HASH`,
/// `PERCPU_CGROUP_STORAGE`.
const PER_CPU: [u32; 4] = [5, 6, 10, 21];

struct Map {
    fd: MapFd,
    map_type: u32,
    key_size: u32,
    value_size: usize,
    max_entries: u32,
    per_cpu: bool,
}

/// The kernel maps of a loaded program, by name, read with
/// `BPF_MAP_LOOKUP_ELEM`. For a per-CPU map a lookup returns CPU 0's value.
pub struct KernelMaps {
    maps: HashMap<String, Map>,
    cpus: usize,
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn kernel_err(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError::Kernel(format!("{what}: {e}"))
}

impl KernelMaps {
    /// The maps the program `info` uses (e.g. `Xdp::info()` of the loaded
    /// balancer).
    pub fn of_program(info: &ProgramInfo) -> Result<Self, VmError> {
        let ids = info
            .map_ids()
            .map_err(|e| kernel_err("the program's map ids", e))?
            .ok_or_else(|| VmError::Kernel("this kernel does not list a program's maps".into()))?;
        Self::from_ids(ids)
    }

    /// The maps with these kernel ids.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Result<Self, VmError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| kernel_err(what, e))?;
        let mut maps = HashMap::new();
        for id in ids {
            let info = MapInfo::from_id(id).map_err(|e| kernel_err("map info", e))?;
            let name = info
                .name_as_str()
                .ok_or_else(|| VmError::Kernel(format!("map {id} has no name")))?
                .to_string();
            let map_type = info
                .map_type()
                .map(|t| t as u32)
                .map_err(|e| kernel_err("map type", e))?;
            let fd = info.fd().map_err(|e| kernel_err("map fd", e))?;
            let map = Map {
                fd,
                map_type,
                key_size: info.key_size(),
                value_size: info.value_size() as usize,
                max_entries: info.max_entries(),
                per_cpu: PER_CPU.contains(&map_type),
            };
            maps.insert(name, map);
        }
        Ok(KernelMaps { maps, cpus })
    }

    /// Makes `prog` match what the loader made of the object: each map's
    /// type, sizes and `max_entries` as the kernel has them, and each global section
    /// (`.rodata`, `.data`, `.bss`) with the bytes of the kernel map of the
    /// same name (the loader's `override_global`s included).
    pub fn configure(&mut self, prog: &mut Program) -> Result<(), VmError> {
        for def in &mut prog.maps {
            if let Some(m) = self.maps.get(&def.name) {
                def.map_type = m.map_type;
                def.key_size = m.key_size;
                def.value_size = m.value_size as u32;
                def.max_entries = m.max_entries;
            }
        }
        for g in 0..prog.globals.len() {
            let name = prog.globals[g].name.clone();
            let Some(bytes) = self.lookup(&name, &0u32.to_le_bytes()) else {
                continue;
            };
            if bytes.len() != prog.globals[g].bytes.len() {
                return Err(VmError::ValueSize {
                    map: name,
                    expected: prog.globals[g].bytes.len(),
                    got: bytes.len(),
                });
            }
            prog.globals[g].bytes = bytes;
        }
        Ok(())
    }

    /// The names of the maps, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.maps.keys().map(String::as_str).collect();
        n.sort();
        n
    }
}

impl MapBackend for KernelMaps {
    fn lookup(&mut self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        let m = self.maps.get(map)?;
        // Per-CPU values come one per possible CPU, each padded to 8 bytes.
        let len = if m.per_cpu {
            m.value_size.next_multiple_of(8) * self.cpus
        } else {
            m.value_size
        };
        let mut value = vec![0u8; len];
        let attr = ElemAttr {
            map_fd: m.fd.as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_LOOKUP_ELEM reads `key_size` bytes at `key` (the
        // interpreter passes exactly the map's key size) and writes at most
        // `len` bytes at `value`; `attr` outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if r != 0 {
            return None;
        }
        value.truncate(m.value_size);
        Some(value)
    }
}
