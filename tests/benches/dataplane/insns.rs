//! Executed eBPF instructions per path: the `bpfvm` interpreter replays a
//! path's frame on the real object, reading the program's own kernel maps
//! (never writing them).
//!
//! Unlike nanoseconds, the count does not depend on the CPU or on what else the
//! machine runs. It counts the program's instructions before the kernel's
//! rewrites (an array lookup the verifier inlines counts as one helper call),
//! not the work inside helpers. Every replay must leave the action and packet
//! the kernel gives for the same frame, or the bench fails: the count is only
//! reported for the path that really runs.

use anyhow::{Context, Result, ensure};
use aya::programs::Xdp;
use balancer_tests::{
    bpfvm::{KernelMaps, Program},
    xdp,
};

/// Replays `frame` through `entry` of `object` (the ELF `prog` was loaded
/// from), then runs it in the kernel and compares. Replay first: a new flow
/// must still be new when the interpreter sees it.
pub fn count(object: &[u8], entry: &str, prog: &Xdp, frame: &[u8]) -> Result<u64> {
    let mut vm = Program::from_elf(object, entry).with_context(|| format!("bpfvm: {entry}"))?;
    let mut maps = KernelMaps::of_program(&prog.info()?)?;
    maps.configure(&mut vm)?;
    let run = vm.run_xdp(frame, &mut maps)?;
    let (action, packet) = xdp::run(prog, frame)?;
    ensure!(
        run.action == action && run.packet == packet,
        "{entry}: the bpfvm replay differs from the kernel: action {} vs {} ({})",
        xdp::action_name(run.action),
        xdp::action_name(action),
        if run.packet == packet {
            "same packet"
        } else {
            "packets differ"
        }
    );
    Ok(run.insns)
}
