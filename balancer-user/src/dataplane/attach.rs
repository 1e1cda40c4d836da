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
    /// The interface carries frames larger than one buffer: a program without
    /// multi-buffer (`xdp.frags`) support would see only their first part, so
    /// it could neither balance them nor answer "fragmentation needed".
    #[error(
        "{iface} has MTU {mtu}: frames above {max} bytes of MTU arrive in several \
         buffers, which this XDP program does not handle; lower the MTU to {max} or less"
    )]
    MtuTooLarge {
        /// Interface name.
        iface: String,
        /// Its MTU.
        mtu: u32,
        /// The largest MTU we attach to.
        max: u32,
    },
    /// The interface's MTU could not be read.
    #[error("reading the MTU of {iface}: {source}")]
    Mtu {
        /// Interface name.
        iface: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
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
    check_mtu(iface)?;
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

/// Largest MTU whose frames fit one XDP buffer on 4 KiB pages: the page
/// minus the 256-byte XDP headroom and the 320-byte `skb_shared_info`,
/// minus Ethernet and one VLAN tag, rounded down (veth's own limit for
/// single-buffer programs is in the same place).
pub const MAX_SINGLE_BUFFER_MTU: u32 = 3498;

/// Refuses interfaces whose frames may span several buffers.
fn check_mtu(iface: &str) -> Result<()> {
    let mtu = mtu_of(iface).map_err(|source| XdpError::Mtu {
        iface: iface.to_string(),
        source,
    })?;
    if mtu > MAX_SINGLE_BUFFER_MTU {
        return Err(XdpError::MtuTooLarge {
            iface: iface.to_string(),
            mtu,
            max: MAX_SINGLE_BUFFER_MTU,
        });
    }
    Ok(())
}

/// The MTU of `iface` in this thread's network namespace (`SIOCGIFMTU` on a
/// socket: sysfs would show the namespace it was mounted in).
fn mtu_of(iface: &str) -> std::io::Result<u32> {
    let name = iface.as_bytes();
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU reads into the ifreq we own.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    // SAFETY: the kernel filled the MTU member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
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
