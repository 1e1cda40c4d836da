//! Benchmark support: the `bench` eBPF object (baselines, restoring wrapper,
//! LRU probes), timing through `BPF_PROG_TEST_RUN`, and robust statistics.

use std::time::Instant;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use balancer::dataplane::objects;
use balancer_common::bench::{BENCH_HEAD_LEN, BenchConfig};

/// The loaded `bench` object.
pub struct BenchObject {
    ebpf: Ebpf,
    jmp: ProgramArray<MapData>,
    cfg: Array<MapData, BenchConfig>,
}

/// Programs in the `bench` object.
pub const BENCH_PROGRAMS: &[&str] = &[
    "bench_pass",
    "bench_macswap",
    "bench_wrapper",
    "bench_lru_shared",
    "bench_lru_percpu",
    "bench_table",
];

impl BenchObject {
    /// Loads the object and all its programs.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new().load(objects::BENCH)?;
        for name in BENCH_PROGRAMS {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow::anyhow!("{name} missing"))?
                .try_into()?;
            p.load()?;
        }
        let jmp = ProgramArray::try_from(
            ebpf.take_map("BENCH_JMP")
                .ok_or_else(|| anyhow::anyhow!("BENCH_JMP"))?,
        )?;
        let cfg = Array::try_from(
            ebpf.take_map("BENCH_CFG")
                .ok_or_else(|| anyhow::anyhow!("BENCH_CFG"))?,
        )?;
        Ok(Self { ebpf, jmp, cfg })
    }

    /// A program of the object.
    pub fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("bench program {name}"))
    }

    /// Points the wrapper at `target` and tells it how to restore `input`.
    /// `rotate` makes every repeat a new connection (see [`BenchConfig`]).
    pub fn wrap(
        &mut self,
        target: &ProgramFd,
        input: &[u8],
        rotate: Option<(usize, usize)>,
    ) -> anyhow::Result<()> {
        self.wrap_as(target, input, rotate, false)
    }

    /// [`Self::wrap`] for a program that cuts the packet's tail (a RST
    /// reply): the wrapper restores the length there.
    pub fn wrap_tail(
        &mut self,
        target: &ProgramFd,
        input: &[u8],
        rotate: Option<(usize, usize)>,
    ) -> anyhow::Result<()> {
        self.wrap_as(target, input, rotate, true)
    }

    fn wrap_as(
        &mut self,
        target: &ProgramFd,
        input: &[u8],
        rotate: Option<(usize, usize)>,
        tail: bool,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            input.len() >= BENCH_HEAD_LEN,
            "bench packets must be >= {BENCH_HEAD_LEN} bytes"
        );
        let mut head = [0u8; BENCH_HEAD_LEN];
        head.copy_from_slice(&input[..BENCH_HEAD_LEN]);
        let (sport_off, src_lo_off) = rotate.unwrap_or((0, 0));
        let cfg = BenchConfig {
            orig_len: input.len() as u32,
            rotate: rotate.is_some() as u32,
            sport_off: sport_off as u32,
            src_lo_off: src_lo_off as u32,
            tail: tail as u32,
            head,
        };
        self.cfg.set(0, cfg, 0)?;
        self.jmp.set(0, target, 0)?;
        Ok(())
    }
}

/// One timed run: mean nanoseconds per repeat from the wall clock around the
/// syscall (sub-nanosecond resolution) and as the kernel reports it (whole
/// nanoseconds), plus the last run's action.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Wall-clock nanoseconds per repeat.
    pub wall_ns: f64,
    /// The kernel's nanoseconds per repeat.
    pub kernel_ns: f64,
    /// Action of the last repeat.
    pub action: u32,
}

/// Runs `prog` `repeat` times on `input`.
pub fn time(prog: &Xdp, input: &[u8], repeat: u32) -> anyhow::Result<Timing> {
    let t0 = Instant::now();
    let r = prog.test_run(TestRunOptions {
        data_in: Some(input),
        repeat,
        ..TestRunOptions::new()
    })?;
    let wall = t0.elapsed();
    Ok(Timing {
        wall_ns: wall.as_nanos() as f64 / repeat as f64,
        kernel_ns: r.duration.as_nanos() as f64,
        action: r.return_value,
    })
}

/// Minimum and median of samples.
pub fn min_median(samples: &[f64]) -> (f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (s[0], med)
}

/// Pins the calling thread to one CPU, so a run is not migrated mid-way.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}
