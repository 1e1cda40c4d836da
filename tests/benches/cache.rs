//! `cargo xtask bench cache`: replays the cache traces of
//! `shared/data/traces/cache/` (and the Mooncake prefix-block trace) at
//! several cache sizes through our policy and three baselines in the same
//! run: plain LRU, moka (TinyLFU admission before an LRU; moka 0.12 has no
//! window yet) and quick_cache (S3-FIFO-like), plus GreedyDual-Size-Frequency
//! as the reference for cost and size awareness.
//!
//! Prints object hit ratio, byte hit ratio for traces with sizes, and the
//! cost saved for traces with miss penalties, with ratios against LRU and
//! the best of the three baselines.
//!
//! Options: `--limit N` accesses per trace (default 2,000,000; the P3 and
//! P6 traces hold 3.9 and 12.7 million), `--only NAME[,NAME]` substrings of
//! trace names, `--sizes F[,F]` cache sizes as fractions of the trace's
//! footprint (distinct objects, or their bytes for traces with sizes),
//! `--trace FILE` (repeatable) to run these files instead of the built-in
//! list: the format comes from the file's name as for the built-in ones
//! (`*.lis[.zst]`, `lirs-*`, `cache2k-*`, `adapt_size-*`,
//! `address_penalties-*`, optionally `.gz`/`.xz`/`.zst`; `*.jsonl` is read
//! as a Mooncake trace).
//! Traces with costs also run at 0.05% and 0.2%, where misses are common
//! enough for cost-awareness to show.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use balancer::cache::policy::Policy;
use balancer_tests::traces::{self, Access, Trace};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// One simulated cache: `access` answers hit or miss and admits on a miss.
trait Sim {
    fn access(&mut self, a: &Access) -> bool;
}

struct Ours(Policy<u64>);

impl Sim for Ours {
    fn access(&mut self, a: &Access) -> bool {
        if self.0.touch(&a.key) {
            return true;
        }
        self.0.insert(a.key, a.size as u64, a.cost as f64);
        false
    }
}

/// LRU by bytes: evict least recently used until the new object fits.
struct Lru {
    map: lru::LruCache<u64, u32>,
    used: u64,
    cap: u64,
}

impl Sim for Lru {
    fn access(&mut self, a: &Access) -> bool {
        if self.map.get(&a.key).is_some() {
            return true;
        }
        if a.size as u64 > self.cap {
            return false;
        }
        self.used += a.size as u64;
        self.map.put(a.key, a.size);
        while self.used > self.cap {
            match self.map.pop_lru() {
                Some((_, s)) => self.used -= s as u64,
                None => break,
            }
        }
        false
    }
}

/// moka applies its policy lazily, in batches: until then, inserted
/// entries sit in its table beyond the capacity and still answer hits (at a
/// 17-entry cache that is several times the capacity). Running the pending
/// work after each insert holds it to the same capacity as the others.
struct Moka(moka::sync::Cache<u64, u32>);

impl Sim for Moka {
    fn access(&mut self, a: &Access) -> bool {
        if self.0.get(&a.key).is_some() {
            return true;
        }
        self.0.insert(a.key, a.size);
        self.0.run_pending_tasks();
        false
    }
}

#[derive(Clone)]
struct BySize;

impl quick_cache::Weighter<u64, u32> for BySize {
    fn weight(&self, _: &u64, v: &u32) -> u64 {
        *v as u64
    }
}

struct Quick(quick_cache::unsync::Cache<u64, u32, BySize>);

impl Sim for Quick {
    fn access(&mut self, a: &Access) -> bool {
        if self.0.get(&a.key).is_some() {
            return true;
        }
        self.0.insert(a.key, a.size);
        false
    }
}

/// GreedyDual-Size-Frequency (Cherkasova, 1998), the classic cost- and
/// size-aware policy: evict the least `L + f × cost / size`, where `L`
/// inflates to each victim's priority so old entries age. A priority queue,
/// O(log n). Shown as the reference for byte hit ratio and cost saved; the
/// hit-ratio target is against the three caches above.
#[derive(Default)]
struct Gdsf {
    /// (priority bits, last access: ties go to the least recent, key)
    queue: std::collections::BTreeSet<(u64, u64, u64)>,
    /// key -> (priority bits, last access, frequency, cost, size)
    entries: std::collections::HashMap<u64, (u64, u64, u32, f64, u64)>,
    inflation: f64,
    used: u64,
    cap: u64,
    clock: u64,
}

impl Sim for Gdsf {
    fn access(&mut self, a: &Access) -> bool {
        // Non-negative f64s order as their bits do.
        let priority =
            |l: f64, f: u32, cost: f64, size: u64| (l + f as f64 * cost / size as f64).to_bits();
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&a.key) {
            self.queue.remove(&(e.0, e.1, a.key));
            e.2 += 1;
            e.0 = priority(self.inflation, e.2, e.3, e.4);
            e.1 = self.clock;
            self.queue.insert((e.0, e.1, a.key));
            return true;
        }
        let size = (a.size as u64).max(1);
        if size > self.cap {
            return false;
        }
        while self.used + size > self.cap {
            let Some((p, _, k)) = self.queue.pop_first() else {
                break;
            };
            self.inflation = f64::from_bits(p);
            if let Some(e) = self.entries.remove(&k) {
                self.used -= e.4;
            }
        }
        let cost = (a.cost as f64).max(f64::MIN_POSITIVE);
        let p = priority(self.inflation, 1, cost, size);
        self.entries.insert(a.key, (p, self.clock, 1, cost, size));
        self.queue.insert((p, self.clock, a.key));
        self.used += size;
        false
    }
}

const POLICIES: [&str; 5] = ["LRU", "moka", "quick_cache", "balancer", "GDSF"];

fn make(which: &str, cap: u64, items: usize) -> Box<dyn Sim> {
    match which {
        "LRU" => Box::new(Lru {
            map: lru::LruCache::unbounded(),
            used: 0,
            cap,
        }),
        "moka" => Box::new(Moka(
            moka::sync::Cache::builder()
                .max_capacity(cap)
                .weigher(|_: &u64, v: &u32| *v)
                .build(),
        )),
        "quick_cache" => Box::new(Quick(quick_cache::unsync::Cache::with_weighter(
            items.max(16),
            cap,
            BySize,
        ))),
        "GDSF" => Box::new(Gdsf {
            cap,
            ..Default::default()
        }),
        _ => Box::new(Ours(Policy::new(cap, items))),
    }
}

#[derive(Default, Clone, Copy)]
struct Score {
    hits: u64,
    bytes_hit: u64,
    cost_saved: f64,
    mops: f64,
}

fn replay(t: &Trace, which: &str, cap: u64, items: usize) -> Score {
    let mut sim = make(which, cap, items);
    let mut s = Score::default();
    let t0 = Instant::now();
    for a in &t.accesses {
        if sim.access(a) {
            s.hits += 1;
            s.bytes_hit += a.size as u64;
            s.cost_saved += a.cost as f64;
        }
    }
    s.mops = t.accesses.len() as f64 / t0.elapsed().as_secs_f64() / 1e6;
    s
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// `bench cache`'s options.
#[derive(Parser)]
#[command(about = "Cache policy hit ratios on traces against LRU, moka and quick_cache")]
struct Args {
    /// Accesses read from each trace.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Run only traces whose name contains one of these.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Cache sizes as fractions of each trace's footprint, in (0, 1].
    #[arg(long, value_delimiter = ',', value_parser = fraction)]
    sizes: Option<Vec<f64>>,
    /// A trace file to run instead of the built-in list (repeatable).
    #[arg(long = "trace", value_name = "FILE")]
    traces: Vec<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?}: give a fraction in (0, 1], such as 0.05")),
    }
}

/// The traces to run: the files given, or the built-in list and Mooncake.
fn trace_files(args: &Args) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = if args.traces.is_empty() {
        let dir = balancer_tests::shared_data("traces/cache");
        let mut v: Vec<PathBuf> = traces::TRACES.iter().map(|f| dir.join(f)).collect();
        v.push(balancer_tests::shared_data(
            "traces/arrivals/mooncake-conversation_trace.jsonl",
        ));
        v
    } else {
        args.traces.clone()
    };
    if !args.only.is_empty() {
        files.retain(|f| {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            args.only.iter().any(|p| name.contains(p.as_str()))
        });
    }
    files
}

/// Loads one trace, by its file name's format.
fn load(path: &Path, limit: usize) -> Result<Trace> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{}: not a file name", path.display()))?;
    if name.ends_with(".jsonl") {
        return traces::load_mooncake(path, limit);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    traces::load(dir, &name, limit)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let custom_sizes = args.sizes.is_some();
    let sizes = args.sizes.clone().unwrap_or_else(|| vec![0.01, 0.05, 0.2]);
    let files = trace_files(&args);
    if files.is_empty() {
        bail!("no trace left to run (check --only and --trace)");
    }
    println!(
        "bench cache: {} traces, sizes {:?} of each footprint, up to {limit} accesses each\n",
        files.len(),
        sizes
    );
    let pb = ProgressBar::new((files.len() * (sizes.len() + 2)) as u64);
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").context("style")?);
    let mut rows = Vec::new();
    for f in &files {
        pb.set_message(format!("loading {}", f.display()));
        let t = load(f, limit)?;
        let (distinct, bytes) = t.footprint();
        let total_bytes: u64 = t.accesses.iter().map(|a| a.size as u64).sum();
        let total_cost: f64 = t.accesses.iter().map(|a| a.cost as f64).sum();
        // Costs only matter where misses are common: small caches too.
        let mut fracs = sizes.clone();
        if t.costed && !custom_sizes {
            fracs.splice(0..0, [0.0005, 0.002]);
        }
        for &frac in &fracs {
            pb.set_message(format!("{} at {}%", t.name, frac * 100.0));
            let (cap, items) = if t.sized {
                let cap = (bytes as f64 * frac) as u64;
                (cap, ((distinct as f64 * frac) as usize).max(16))
            } else {
                let n = ((distinct as f64 * frac) as u64).max(4);
                (n, n as usize)
            };
            let scores: Vec<Score> = POLICIES.iter().map(|p| replay(&t, p, cap, items)).collect();
            rows.push((meta(&t), frac, cap, scores, total_bytes, total_cost));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();

    let n_acc = |m: &Meta| m.accesses as f64;
    println!("object hit ratio, %  (ratio: balancer / best baseline)");
    println!(
        "{:<22} {:>6} {:>9} {:>8} {:>8} {:>12} {:>9} {:>7}",
        "trace", "size", "capacity", "LRU", "moka", "quick_cache", "balancer", "ratio"
    );
    let (mut wins, mut total) = (0, 0);
    let mut ratios = Vec::new();
    // Per trace, in order: (name, sizes won, sizes).
    let mut per_trace: Vec<(&str, usize, usize)> = Vec::new();
    for (m, frac, cap, s, _, _) in &rows {
        let hr: Vec<f64> = s.iter().map(|x| x.hits as f64 / n_acc(m)).collect();
        let best = hr[..3].iter().cloned().fold(0.0, f64::max);
        total += 1;
        if per_trace.last().is_none_or(|t| t.0 != m.name) {
            per_trace.push((&m.name, 0, 0));
        }
        if let Some(t) = per_trace.last_mut() {
            t.2 += 1;
        }
        // Equal within a hundredth of a percentage point counts as matching.
        if hr[3] + 1e-4 >= best {
            wins += 1;
            if let Some(t) = per_trace.last_mut() {
                t.1 += 1;
            }
        }
        if best > 0.0 {
            ratios.push(hr[3] / best);
        }
        println!(
            "{:<22} {:>5}% {:>9} {:>8} {:>8} {:>12} {:>9} {:>7.3}",
            m.name,
            frac * 100.0,
            cap,
            pct(hr[0]),
            pct(hr[1]),
            pct(hr[2]),
            pct(hr[3]),
            if best > 0.0 { hr[3] / best } else { 1.0 }
        );
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(1.0);
    let close = ratios.iter().filter(|r| **r >= 0.95).count();
    println!(
        "\nbalancer >= best baseline on {wins} of {total} trace/size pairs; within 5% of it on {close} of {}; median ratio {median:.3}",
        ratios.len()
    );
    let traces_won = per_trace.iter().filter(|t| 2 * t.1 > t.2).count();
    println!(
        "balancer >= best baseline at most of a trace's sizes on {traces_won} of {} traces",
        per_trace.len()
    );

    let sized: Vec<_> = rows.iter().filter(|r| r.0.sized).collect();
    if !sized.is_empty() {
        println!("\nbyte hit ratio, % (traces with sizes)");
        println!(
            "{:<22} {:>6} {:>8} {:>8} {:>12} {:>9} {:>8}",
            "trace", "size", "LRU", "moka", "quick_cache", "balancer", "GDSF"
        );
        for (m, frac, _, s, tb, _) in sized {
            let b: Vec<String> = s
                .iter()
                .map(|x| pct(x.bytes_hit as f64 / *tb as f64))
                .collect();
            println!(
                "{:<22} {:>5}% {:>8} {:>8} {:>12} {:>9} {:>8}",
                m.name,
                frac * 100.0,
                b[0],
                b[1],
                b[2],
                b[3],
                b[4]
            );
        }
    }
    let costed: Vec<_> = rows.iter().filter(|r| r.0.costed).collect();
    if !costed.is_empty() {
        println!(
            "\ncost saved, % of all miss penalties (traces with costs); target balancer/LRU >= 1.3"
        );
        println!(
            "{:<22} {:>6} {:>8} {:>8} {:>12} {:>9} {:>8} {:>11}",
            "trace", "size", "LRU", "moka", "quick_cache", "balancer", "GDSF", "bal/LRU"
        );
        for (m, frac, _, s, _, tc) in costed {
            let c: Vec<f64> = s.iter().map(|x| x.cost_saved / tc).collect();
            println!(
                "{:<22} {:>5}% {:>8} {:>8} {:>12} {:>9} {:>8} {:>11.3}",
                m.name,
                frac * 100.0,
                pct(c[0]),
                pct(c[1]),
                pct(c[2]),
                pct(c[3]),
                pct(c[4]),
                if c[0] > 0.0 {
                    c[3] / c[0]
                } else {
                    f64::INFINITY
                }
            );
        }
    }
    let mut mops = [0.0; POLICIES.len()];
    for r in &rows {
        for (i, s) in r.3.iter().enumerate() {
            mops[i] += s.mops / rows.len() as f64;
        }
    }
    println!(
        "\nsingle-thread replay speed, mean M accesses/s: LRU {:.1}, moka {:.1}, quick_cache {:.1}, balancer {:.1}, GDSF {:.1}",
        mops[0], mops[1], mops[2], mops[3], mops[4]
    );
    Ok(())
}

/// What the report needs of a trace.
struct Meta {
    name: String,
    accesses: usize,
    sized: bool,
    costed: bool,
}

fn meta(t: &Trace) -> Meta {
    Meta {
        name: t.name.clone(),
        accesses: t.accesses.len(),
        sized: t.sized,
        costed: t.costed,
    }
}
