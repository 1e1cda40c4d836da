//! The BPF helpers the interpreter implements.
//!
//! | id  | helper                      | here                                      |
//! | --- | --------------------------- | ----------------------------------------- |
//! | 1   | `bpf_map_lookup_elem`       | the run's copy of the value, or NULL      |
//! | 2   | `bpf_map_update_elem`       | stores into the run's copy                |
//! | 3   | `bpf_map_delete_elem`       | removes the run's copy                    |
//! | 5   | `bpf_ktime_get_ns`          | [`KTIME_NS`], 1 µs more on each call      |
//! | 14  | `bpf_get_smp_processor_id`  | 0                                         |
//! | 44  | `bpf_xdp_adjust_head`       | moves `data`                              |
//! | 65  | `bpf_xdp_adjust_tail`       | moves `data_end`                          |
//! | 118 | `bpf_jiffies64`             | [`JIFFIES`]                               |
//!
//! Any other helper is a [`VmError::UnknownHelper`].

use super::{VmError, exec::Vm};

/// What `bpf_ktime_get_ns` returns on a run's first call.
pub const KTIME_NS: u64 = 1_000_000_000_000;
/// How much `bpf_ktime_get_ns` advances per call.
pub const KTIME_STEP_NS: u64 = 1_000;
/// What `bpf_jiffies64` returns.
pub const JIFFIES: u64 = 4_295_000_000;

const EINVAL: i64 = 22;
const ENOENT: i64 = 2;
const EEXIST: i64 = 17;
const E2BIG: i64 = 7;
/// `BPF_NOEXIST`, `BPF_EXIST`.
const NOEXIST: u64 = 1;
const EXIST: u64 = 2;

fn errno(e: i64) -> u64 {
    (-e) as u64
}

/// Runs helper `id` for the call at `pc`; returns r0.
pub(crate) fn call(vm: &mut Vm<'_, '_>, pc: usize, id: u32) -> Result<u64, VmError> {
    let [r1, r2, r3, r4] = [vm.regs[1], vm.regs[2], vm.regs[3], vm.regs[4]];
    match id {
        1 => {
            let (m, key) = map_key(vm, pc, id, r1, r2)?;
            Ok(lookup(vm, m, &key)?.unwrap_or(0))
        }
        2 => {
            let (m, key) = map_key(vm, pc, id, r1, r2)?;
            let def = &vm.prog.maps[m];
            let (size, array, max) = (def.value_size as usize, def.is_array(), def.max_entries);
            let value = vm
                .mem
                .read(r3, size)
                .map_err(|f| vm.fault(pc, r3, size, false, f))?;
            let flags = r4 & 3;
            if array {
                if index(&key) >= max {
                    return Ok(errno(E2BIG));
                }
                if flags == NOEXIST {
                    return Ok(errno(EEXIST));
                }
            } else {
                let exists = lookup(vm, m, &key)?.is_some();
                if flags == NOEXIST && exists {
                    return Ok(errno(EEXIST));
                }
                if flags == EXIST && !exists {
                    return Ok(errno(ENOENT));
                }
            }
            vm.mem.put_value(m, &key, value);
            Ok(0)
        }
        3 => {
            let (m, key) = map_key(vm, pc, id, r1, r2)?;
            if vm.prog.maps[m].is_array() {
                return Ok(errno(EINVAL));
            }
            if lookup(vm, m, &key)?.is_none() {
                return Ok(errno(ENOENT));
            }
            vm.mem.set_absent(m, &key);
            Ok(0)
        }
        5 => {
            let n = vm.helper_calls.get(&5).copied().unwrap_or(1) - 1;
            Ok(KTIME_NS + n * KTIME_STEP_NS)
        }
        14 => Ok(0),
        44 | 65 => {
            if r1 != vm.mem.ctx() {
                return Err(VmError::Access {
                    at: vm.prog.location(pc),
                    addr: r1,
                    size: 0,
                    write: false,
                    fault: super::Fault::Unmapped,
                });
            }
            let delta = i64::from(r2 as u32 as i32);
            let ok = if id == 44 {
                vm.mem.adjust_head(delta)
            } else {
                vm.mem.adjust_tail(delta)
            };
            Ok(if ok { 0 } else { errno(EINVAL) })
        }
        118 => Ok(JIFFIES),
        _ => Err(VmError::UnknownHelper {
            at: vm.prog.location(pc),
            id,
        }),
    }
}

/// The array index a key names.
fn index(key: &[u8]) -> u32 {
    key.get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(u32::MAX)
}

/// The map named by `map` and the key bytes at `key`.
fn map_key(
    vm: &Vm<'_, '_>,
    pc: usize,
    helper: u32,
    map: u64,
    key: u64,
) -> Result<(usize, Vec<u8>), VmError> {
    let m = vm.mem.map_of(map).ok_or_else(|| VmError::NotAMap {
        at: vm.prog.location(pc),
        helper,
        value: map,
    })?;
    let def = &vm.prog.maps[m];
    if def.key_size == 0 {
        return Err(VmError::Malformed(format!(
            "map {} has no layout (a .maps map: set it with set_map_layout or \
             KernelMaps::configure)",
            def.name
        )));
    }
    let size = def.key_size as usize;
    let key = vm
        .mem
        .read(key, size)
        .map_err(|f| vm.fault(pc, key, size, false, f))?;
    Ok((m, key))
}

/// The address of the run's copy of `(m, key)`, fetching it from the backend
/// on first use; `None` if the key is absent. An array element the backend
/// does not have reads as zeros if its index is below `max_entries`.
fn lookup(vm: &mut Vm<'_, '_>, m: usize, key: &[u8]) -> Result<Option<u64>, VmError> {
    if let Some(cached) = vm.mem.cached_value(m, key) {
        return Ok(cached);
    }
    let def = &vm.prog.maps[m];
    let size = def.value_size as usize;
    let value = match vm.maps.lookup(&def.name, key) {
        Some(v) if v.len() != size => {
            return Err(VmError::ValueSize {
                map: def.name.clone(),
                expected: size,
                got: v.len(),
            });
        }
        Some(v) => v,
        None if def.is_array() && index(key) < def.max_entries => vec![0; size],
        None => {
            vm.mem.set_absent(m, key);
            return Ok(None);
        }
    };
    Ok(Some(vm.mem.put_value(m, key, value)))
}
