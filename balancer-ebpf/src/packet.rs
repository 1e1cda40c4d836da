//! Bounds-checked access to the packet.
//!
//! Every read or write of packet memory goes through [`ptr_at`] (or its mutable
//! twin), which compares the end of the access against `data_end` right before
//! handing out the pointer: exactly the check the verifier wants to see.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

/// Largest offset at which the programs look for a header. Masking variable
/// offsets with it gives the verifier a bound to work with.
pub const MAX_HDR_OFFSET: usize = 0x3ff;

/// Pointer to a `T` at `offset` bytes into the packet, or `None` if the packet
/// is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Mutable twin of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Loads a 32-bit word from packet memory. Packet headers are only 2-byte
/// aligned (Ethernet is 14 bytes), and the kernel allows misaligned packet
/// loads on the architectures XDP runs on; `read_unaligned` would be split into
/// four byte loads by LLVM, and `ptr::read` would promise an alignment we don't
/// have. One BPF instruction says exactly what we mean.
///
/// # Safety
/// `p` must point to 4 readable bytes.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: the caller guarantees 4 readable bytes at p.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(readonly, nostack, preserves_flags),
        );
    }
    v as u32
}

/// Stores a 32-bit word to packet memory (see [`load32`]).
///
/// # Safety
/// `p` must point to 4 writable bytes.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: the caller guarantees 4 writable bytes at p.
    unsafe {
        core::arch::asm!(
            "*(u32 *)({p} + 0) = {v}",
            p = in(reg) p,
            v = in(reg) v as u64,
            options(nostack, preserves_flags),
        );
    }
}

/// Loads a 16-bit word from packet memory (see [`load32`]).
///
/// # Safety
/// `p` must point to 2 readable bytes.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: the caller guarantees 2 readable bytes at p.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(readonly, nostack, preserves_flags),
        );
    }
    v as u16
}

/// Stores a 16-bit word to packet memory (see [`load32`]).
///
/// # Safety
/// `p` must point to 2 writable bytes.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: the caller guarantees 2 writable bytes at p.
    unsafe {
        core::arch::asm!(
            "*(u16 *)({p} + 0) = {v}",
            p = in(reg) p,
            v = in(reg) v as u64,
            options(nostack, preserves_flags),
        );
    }
}

// Host builds (this crate is a build dependency of balancer-user, and clippy
// checks it) get portable equivalents; only the BPF target runs them.

/// Host stand-in for the BPF [`load32`].
///
/// # Safety
/// `p` must point to 4 readable bytes.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    // SAFETY: per the contract.
    unsafe { (p as *const u32).read_unaligned() }
}

/// Host stand-in for the BPF [`store32`].
///
/// # Safety
/// `p` must point to 4 writable bytes.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: per the contract.
    unsafe { (p as *mut u32).write_unaligned(v) }
}

/// Host stand-in for the BPF [`load16`].
///
/// # Safety
/// `p` must point to 2 readable bytes.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    // SAFETY: per the contract.
    unsafe { (p as *const u16).read_unaligned() }
}

/// Host stand-in for the BPF [`store16`].
///
/// # Safety
/// `p` must point to 2 writable bytes.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: per the contract.
    unsafe { (p as *mut u16).write_unaligned(v) }
}

/// 8-byte aligned storage: the stack copy of a header must be aligned, because
/// the verifier rejects misaligned stack access even where packet access may be.
#[repr(C, align(8))]
struct Aligned<T>(MaybeUninit<T>);

/// Copies `n` bytes from the packet into aligned memory, word by word.
#[inline(always)]
unsafe fn from_packet(src: *const u8, dst: *mut u8, n: usize) {
    let mut i = 0;
    // SAFETY (whole block): the caller guarantees n readable bytes at src and
    // n writable, 8-aligned bytes at dst.
    unsafe {
        while i + 4 <= n {
            (dst.add(i) as *mut u32).write(load32(src.add(i)));
            i += 4;
        }
        if i + 2 <= n {
            (dst.add(i) as *mut u16).write(load16(src.add(i)));
            i += 2;
        }
        if i < n {
            *dst.add(i) = *src.add(i);
        }
    }
}

/// Copies `n` bytes from aligned memory into the packet, word by word.
#[inline(always)]
unsafe fn to_packet(src: *const u8, dst: *mut u8, n: usize) {
    let mut i = 0;
    // SAFETY (whole block): as in from_packet, directions swapped.
    unsafe {
        while i + 4 <= n {
            store32(dst.add(i), (src.add(i) as *const u32).read());
            i += 4;
        }
        if i + 2 <= n {
            store16(dst.add(i), (src.add(i) as *const u16).read());
            i += 2;
        }
        if i < n {
            *dst.add(i) = *src.add(i);
        }
    }
}

/// Reads a `T` at `offset`, bounds-checked.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    let mut out = Aligned::<T>(MaybeUninit::uninit());
    // SAFETY: ptr_at checked that size_of::<T>() bytes at p lie inside the
    // packet; `out` is aligned and has room for them; T is plain data.
    unsafe {
        from_packet(
            p as *const u8,
            out.0.as_mut_ptr() as *mut u8,
            size_of::<T>(),
        );
        Some(out.0.assume_init())
    }
}

/// Writes a `T` at `offset`, bounds-checked. Returns `None` if it doesn't fit.
#[inline(always)]
pub fn write_at<T: Copy>(ctx: &XdpContext, offset: usize, v: T) -> Option<()> {
    let p = ptr_at_mut::<T>(ctx, offset)?;
    let src = Aligned::<T>(MaybeUninit::new(v));
    // SAFETY: as in read_at.
    unsafe { to_packet(src.0.as_ptr() as *const u8, p as *mut u8, size_of::<T>()) };
    Some(())
}

/// Current packet length.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Moves the packet start by `delta` bytes (negative grows the headroom into the
/// packet). Every packet pointer taken before is invalid afterwards.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: plain helper call on our own context.
    let rc = unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) };
    if rc == 0 { Some(()) } else { None }
}

/// Moves the packet end by `delta` bytes (negative trims).
#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: plain helper call on our own context.
    let rc = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) };
    if rc == 0 { Some(()) } else { None }
}
