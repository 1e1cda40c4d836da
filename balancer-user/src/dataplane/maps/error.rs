//! The maps' one error type.

use aya::maps::MapError;

/// Errors opening or using the maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map the program needs is neither in the object nor pinned.
    #[error("map {name} is missing (looked in {place})")]
    Missing {
        /// Map name.
        name: &'static str,
        /// The object or pin directory searched.
        place: String,
    },
    /// The kernel refused a map operation.
    #[error("map {name}: {source}")]
    Kernel {
        /// Map name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// A pinned map's shape differs from this build's: it was created by an
    /// incompatible version of the program.
    #[error(
        "pinned map {name} has {what} {got}, this build expects {want}; \
         detach the old data plane (`balancer detach`) before starting this version"
    )]
    Layout {
        /// Map name.
        name: &'static str,
        /// Which property differs.
        what: &'static str,
        /// Found in the kernel.
        got: u32,
        /// Expected by this build.
        want: u32,
    },
    /// Mapping the rings into memory failed.
    #[error("mmap of RINGS: {0}")]
    Mmap(#[source] nix::Error),
    /// An index beyond a map's size.
    #[error("{name} index {index} out of range (size {size})")]
    OutOfRange {
        /// Map name.
        name: &'static str,
        /// The index asked for.
        index: u32,
        /// Map size.
        size: u32,
    },
    /// No free `VIPS` slot within probe reach of a new VIP's home slot, or the
    /// table holds as many VIPs as it may.
    #[error("VIP table full ({vips} VIPs): raise max_vips")]
    VipTableFull {
        /// VIPs in the table.
        vips: u32,
    },
    /// Counting CPUs for per-CPU values failed.
    #[error("counting possible CPUs: {0}")]
    Cpus(String),
}

/// Results of map operations.
pub(super) type Result<T> = std::result::Result<T, MapsError>;

/// Wraps a kernel error with the map's name.
pub(super) fn kernel(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Kernel { name, source }
}
