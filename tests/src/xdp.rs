//! Running XDP programs on test packets through `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun, TestRunOptions, Xdp};

/// `XDP_ABORTED`.
pub const ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const DROP: u32 = 1;
/// `XDP_PASS`.
pub const PASS: u32 = 2;
/// `XDP_TX`.
pub const TX: u32 = 3;

/// Name of an XDP action, for messages.
pub fn action_name(a: u32) -> &'static str {
    match a {
        ABORTED => "ABORTED",
        DROP => "DROP",
        PASS => "PASS",
        TX => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// Runs `prog` once on `input`; returns the action and the output packet.
pub fn run(prog: &Xdp, input: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; input.len() + 512];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::new()
        })
        .map_err(std::io::Error::other)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Runs `prog` `repeat` times on one buffer; returns the kernel's mean
/// nanoseconds per run and the action of the last run.
pub fn run_repeat(prog: &Xdp, input: &[u8], repeat: u32) -> std::io::Result<(f64, u32)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            repeat,
            ..TestRunOptions::new()
        })
        .map_err(std::io::Error::other)?;
    Ok((r.duration.as_nanos() as f64, r.return_value))
}
