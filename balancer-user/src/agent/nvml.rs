//! NVIDIA Management Library, loaded at run time (`libnvidia-ml.so.1`), so the
//! same binary runs on hosts with and without GPUs.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};

use libloading::{Library, Symbol};

type Device = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// One GPU's readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Index.
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Utilisation, percent.
    pub util_percent: u32,
    /// Memory used, bytes.
    pub mem_used: u64,
    /// Memory free, bytes.
    pub mem_free: u64,
    /// Power draw, milliwatts.
    pub power_mw: u32,
}

/// A loaded, initialised NVML.
pub struct Nvml {
    lib: Library,
}

// SAFETY: NVML is thread-safe after nvmlInit (documented by NVIDIA).
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

const OK: c_int = 0;

impl Nvml {
    /// Loads and initialises NVML; `None` without a driver.
    pub fn load() -> Option<Self> {
        // SAFETY: loading a shared library runs its initialisers; NVML's are
        // the vendor's. We only call documented entry points below.
        let lib = unsafe { Library::new("libnvidia-ml.so.1") }.ok()?;
        // SAFETY: documented signature `nvmlReturn_t nvmlInit_v2(void)`.
        let init: Symbol<unsafe extern "C" fn() -> c_int> =
            unsafe { lib.get(b"nvmlInit_v2\0") }.ok()?;
        // SAFETY: as above.
        if unsafe { init() } != OK {
            return None;
        }
        Some(Self { lib })
    }

    /// Current readings of every GPU (GPUs that fail to answer are skipped).
    pub fn devices(&self) -> Vec<Gpu> {
        // SAFETY (whole function): documented NVML signatures; out-pointers
        // point at live locals of the declared types.
        unsafe {
            let Ok(count_fn) = self
                .lib
                .get::<unsafe extern "C" fn(*mut c_uint) -> c_int>(b"nvmlDeviceGetCount_v2\0")
            else {
                return Vec::new();
            };
            let Ok(handle_fn) = self
                .lib
                .get::<unsafe extern "C" fn(c_uint, *mut Device) -> c_int>(
                    b"nvmlDeviceGetHandleByIndex_v2\0",
                )
            else {
                return Vec::new();
            };
            let util_fn = self
                .lib
                .get::<unsafe extern "C" fn(Device, *mut Utilization) -> c_int>(
                    b"nvmlDeviceGetUtilizationRates\0",
                )
                .ok();
            let mem_fn = self
                .lib
                .get::<unsafe extern "C" fn(Device, *mut Memory) -> c_int>(
                    b"nvmlDeviceGetMemoryInfo\0",
                )
                .ok();
            let power_fn = self
                .lib
                .get::<unsafe extern "C" fn(Device, *mut c_uint) -> c_int>(
                    b"nvmlDeviceGetPowerUsage\0",
                )
                .ok();
            let uuid_fn = self
                .lib
                .get::<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int>(
                    b"nvmlDeviceGetUUID\0",
                )
                .ok();
            let mut n: c_uint = 0;
            if count_fn(&mut n) != OK {
                return Vec::new();
            }
            let mut out = Vec::new();
            for i in 0..n {
                let mut dev: Device = std::ptr::null_mut();
                if handle_fn(i, &mut dev) != OK {
                    continue;
                }
                let mut u = Utilization::default();
                let mut m = Memory::default();
                let mut p: c_uint = 0;
                let mut buf = [0 as c_char; 96];
                let util_ok = util_fn.as_ref().is_some_and(|f| f(dev, &mut u) == OK);
                let mem_ok = mem_fn.as_ref().is_some_and(|f| f(dev, &mut m) == OK);
                let _ = power_fn.as_ref().map(|f| f(dev, &mut p));
                let uuid = match uuid_fn.as_ref() {
                    Some(f) if f(dev, buf.as_mut_ptr(), buf.len() as c_uint) == OK => {
                        std::ffi::CStr::from_ptr(buf.as_ptr())
                            .to_string_lossy()
                            .into_owned()
                    }
                    _ => format!("GPU-{i}"),
                };
                if util_ok || mem_ok {
                    out.push(Gpu {
                        index: i,
                        uuid,
                        util_percent: u.gpu,
                        mem_used: m.used,
                        mem_free: m.free,
                        power_mw: p,
                    });
                }
            }
            out
        }
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: documented `nvmlReturn_t nvmlShutdown(void)`.
        unsafe {
            if let Ok(f) = self
                .lib
                .get::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown\0")
            {
                f();
            }
        }
    }
}
