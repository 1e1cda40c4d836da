//! Loading, attaching and pinning one XDP program: the steps the balancer
//! and the decap program share, with their one error type.
//!
//! Attaching in driver mode falls back to generic (SKB) mode with a warning:
//! virtual and many older NICs have no native XDP, and a slower data plane
//! beats none. A pinned bpf_link outlives this process; an unpinned one
//! lasts as long as the loaded object.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLinkId,
    },
};
use tracing::warn;

use super::AttachMode;

/// Errors loading, attaching or pinning an XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// A program is missing from the object.
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The kernel refused the program (verifier) or an operation on it, or
    /// the program is not an XDP program.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The underlying error; for verifier failures it carries the log.
        #[source]
        source: ProgramError,
    },
    /// Attaching failed in driver and in generic mode.
    #[error("attaching XDP to {iface} failed: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// The last error.
        #[source]
        source: ProgramError,
    },
    /// Pinning, or opening a pin, failed.
    #[error("pinning under {path}: {message}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

type Result<T> = std::result::Result<T, XdpError>;

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> XdpError {
    move |source| XdpError::Program { name, source }
}

fn pin_err(path: &Path) -> impl FnOnce(String) -> XdpError + '_ {
    move |message| XdpError::Pin {
        path: path.to_path_buf(),
        message,
    }
}

/// The XDP program `name` of `ebpf`.
pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(XdpError::MissingProgram(name))?
        .try_into()
        .map_err(program_err(name))
}

/// Loads the XDP program `name` into the kernel (the verifier runs here).
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    program(ebpf, name)?.load().map_err(program_err(name))
}

/// Attaches the loaded program `name` to `iface`: in driver mode, falling
/// back to generic mode with a warning, or in generic mode only. Returns the
/// link and the mode used.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpLinkId, AttachMode)> {
    let prog = program(ebpf, name)?;
    let attach_err = |source| XdpError::Attach {
        iface: iface.to_string(),
        source,
    };
    if mode == AttachMode::Driver {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => return Ok((id, AttachMode::Driver)),
            Err(e) => {
                warn!(program = name, %iface, error = %e, "driver-mode XDP failed; falling back to generic mode (slower)");
            }
        }
    }
    let id = prog.attach(iface, XdpMode::Skb).map_err(attach_err)?;
    Ok((id, AttachMode::Generic))
}

/// Pins the bpf_link `id` of program `name` at `path`, so the attachment
/// outlives this process.
pub(super) fn pin_link(
    ebpf: &mut Ebpf,
    name: &'static str,
    id: XdpLinkId,
    path: &Path,
) -> Result<PinnedLink> {
    let link = program(ebpf, name)?
        .take_link(id)
        .map_err(program_err(name))?;
    let fd_link: FdLink = link.try_into().map_err(|e: LinkError| {
        pin_err(path)(format!(
            "XDP attached through netlink, not a bpf_link ({e}); kernel too old"
        ))
    })?;
    fd_link.pin(path).map_err(|e| pin_err(path)(e.to_string()))
}

/// Pins the loaded program `name` at `path`.
pub(super) fn pin_program(ebpf: &mut Ebpf, name: &'static str, path: &Path) -> Result<()> {
    program(ebpf, name)?
        .pin(path)
        .map_err(|e| pin_err(path)(e.to_string()))
}

/// Opens the bpf_link an earlier process pinned at `path`.
pub(super) fn open_link(path: &Path) -> Result<PinnedLink> {
    PinnedLink::from_pin(path).map_err(|e| pin_err(path)(e.to_string()))
}
