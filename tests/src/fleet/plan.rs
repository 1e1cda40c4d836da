//! A scenario's requests, fixed before any strategy runs, so that every
//! strategy gets the same arrivals, sizes, prompts and tiers.
//!
//! Prompts are text at four bytes a token (the emulator's count), made of
//! hex digits. Mooncake's `hash_ids` become equal 512-token text blocks, so
//! requests that share block ids share a prompt prefix for the router and
//! the engine alike; the Azure traces have no block ids and every prompt is
//! its own.

use anyhow::Result;

use super::{
    scenario::{Mix, Scenario},
    shape,
    workload::{self, MOONCAKE_BLOCK_TOKENS, Row},
};

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Index in the plan.
    pub index: usize,
    /// Send time, seconds from the start of the run.
    pub at_s: f64,
    /// Index of its tier in the scenario's tiers.
    pub tier: usize,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Output tokens (`max_tokens`).
    pub output_tokens: u32,
    /// Block ids of the prompt (trace ids, or ids unique to the request).
    pub blocks: Vec<u64>,
    /// A non-LLM request instead (then the token counts are 0).
    pub task: Option<Task>,
}

/// A request for a non-LLM model of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The model.
    pub model: String,
    /// Speech (`/v1/audio/transcriptions`), else KServe v2.
    pub speech: bool,
    /// Input size in the model's unit.
    pub units: f64,
    /// Tensor elements (KServe v2; 0 for speech).
    pub elements: u64,
}

/// The requests and what the shaping achieved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// In send order.
    pub requests: Vec<Planned>,
    /// Peak-to-average ratio of the planned arrivals.
    pub achieved_par: f64,
    /// Trace seconds per replayed second.
    pub compression: f64,
}

/// splitmix64 over a counter: the plan's only source of chance.
pub struct Rng(u64);

impl Rng {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Plans a scenario's run.
pub fn plan(s: &Scenario) -> Result<Plan> {
    let rows = workload::load(&s.workload.trace)?;
    plan_rows(s, &rows)
}

/// Plans a run from already loaded trace rows.
pub fn plan_rows(s: &Scenario, rows: &[Row]) -> Result<Plan> {
    let n = s.requests();
    let gap = rows.last().map_or(0.0, |r| r.at_s) / rows.len().max(1) as f64;
    let lap = rows.last().map_or(0.0, |r| r.at_s) + gap.max(1e-3);
    // The first n rows, cycled (a lap later each time) if the trace is short.
    let times: Vec<f64> = (0..n)
        .map(|i| rows[i % rows.len()].at_s + (i / rows.len()) as f64 * lap)
        .collect();
    let span = times.last().copied().unwrap_or(0.0) + gap.max(1e-3);
    let base = shape::base(&s.shape.curve, s.shape.bins)?;
    let rate = shape::sharpen(&base, s.shape.peak_to_average)?;
    // Trace time becomes a fraction of the trace's requests (at a finer
    // grain than the curve's windows), then a time on the curve.
    let even = shape::even_out(&times, span, 4 * s.shape.bins);
    let at = shape::warp(&even, 1.0, &rate, s.duration_s);
    let mut rng = Rng::new(s.seed);
    // Its own stream, so adding a mix leaves the tiers' draws as they were.
    let mut mix_rng = Rng::new(s.seed ^ 0x6d69_785f_6d69_7821);
    let mut requests = Vec::with_capacity(n);
    for (i, t) in at.iter().enumerate() {
        let r = &rows[i % rows.len()];
        let mut u = rng.f64();
        let tier = s
            .tiers
            .iter()
            .position(|t| {
                u -= t.share;
                u < 0.0
            })
            .unwrap_or(s.tiers.len() - 1);
        let prompt = r.prompt_tokens.min(s.workload.max_prompt_tokens);
        let nblocks = (prompt / MOONCAKE_BLOCK_TOKENS) as usize;
        let blocks = match &r.blocks {
            // A later lap of the trace reuses its prefixes, as returning
            // users would.
            Some(b) => b.iter().take(nblocks.max(1)).copied().collect(),
            // Ids no other request has: the top bit marks them.
            None => (0..nblocks.max(1) as u64)
                .map(|j| (1 << 63) | ((i as u64) << 20) | j)
                .collect(),
        };
        let task = draw_task(&s.workload.mix, &mut mix_rng);
        let llm = u32::from(task.is_none());
        requests.push(Planned {
            index: i,
            at_s: *t,
            tier,
            prompt_tokens: prompt * llm,
            output_tokens: r.output_tokens.min(s.workload.max_output_tokens) * llm,
            blocks: if task.is_none() { blocks } else { Vec::new() },
            task,
        });
    }
    let achieved_par = shape::peak_to_average(&shape::rate_of(&at, s.duration_s, s.shape.bins));
    Ok(Plan {
        requests,
        achieved_par,
        compression: span / s.duration_s,
    })
}

/// A non-LLM task with the mix's shares, or none (an LLM request); sizes
/// log-uniform in each entry's range. Two draws a request either way.
fn draw_task(mix: &[Mix], rng: &mut Rng) -> Option<Task> {
    let (mut u, v) = (rng.f64(), rng.f64());
    let m = mix.iter().find(|m| {
        u -= m.share;
        u < 0.0
    })?;
    let (lo, hi) = m.units;
    let units = lo * (hi / lo).powf(v);
    Some(Task {
        model: m.model.clone(),
        speech: m.speech,
        units,
        elements: if m.speech {
            0
        } else {
            (units * m.elements_per_unit).ceil().max(1.0) as u64
        },
    })
}

/// The prompt text of a request: its blocks' text (512 tokens, 2048 bytes
/// each), the last one cut to the prompt's length.
pub fn prompt_text(p: &Planned) -> String {
    let len = p.prompt_tokens as usize * 4;
    let mut out = String::with_capacity(len + 2048);
    for b in &p.blocks {
        if out.len() >= len {
            break;
        }
        block_text(*b, &mut out);
    }
    // Past the blocks (a prompt under one block, or a cut trace): filler
    // unique to this request.
    let mut k = 0u64;
    while out.len() < len {
        block_text((1 << 62) ^ ((p.index as u64) << 16) ^ k, &mut out);
        k += 1;
    }
    out.truncate(len);
    out
}

/// 2048 bytes of hex digits determined by `id`.
fn block_text(id: u64, out: &mut String) {
    use std::fmt::Write as _;
    let mut x = id;
    for _ in 0..128 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let _ = write!(out, "{:016x}", z ^ (z >> 31));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(index: usize, tokens: u32, blocks: Vec<u64>) -> Planned {
        Planned {
            index,
            at_s: 0.0,
            tier: 0,
            prompt_tokens: tokens,
            output_tokens: 1,
            blocks,
            task: None,
        }
    }

    #[test]
    fn equal_block_ids_make_equal_prefixes() {
        let a = prompt_text(&planned(0, 1500, vec![7, 8, 9]));
        let b = prompt_text(&planned(1, 1200, vec![7, 8, 5]));
        let c = prompt_text(&planned(2, 1500, vec![6, 8, 9]));
        assert_eq!((a.len(), b.len()), (6000, 4800));
        assert_eq!(a[..4096], b[..4096], "two shared blocks");
        assert_ne!(a[4096..4800], b[4096..4800]);
        assert_ne!(a[..2048], c[..2048]);
        assert!(a.bytes().all(|x| x.is_ascii_hexdigit()));
        // Short prompts get filler of their own.
        let d = prompt_text(&planned(3, 10, vec![]));
        let e = prompt_text(&planned(4, 10, vec![]));
        assert_eq!(d.len(), 40);
        assert_ne!(d, e);
    }
}
