//! The cost model: what a request will cost on each backend, learned
//! online from the latencies the route itself observes.
//!
//! A backend's predicted time to first token is linear in what stands
//! before the request there:
//!
//! `ttft = θ0 + θ1 · (prefill tokens ahead + the request's uncached
//! prompt tokens) / 1000 + θ2 · requests in flight`
//!
//! - *prefill ahead*: uncached prompt tokens the route sent there whose
//!   first token has not come back yet (our own in-flight accounting);
//! - *uncached*: the request's prompt less the prefix that backend's
//!   [`prefix::Index`] says it holds;
//! - θ is fitted per backend by recursive least squares with forgetting,
//!   one update per streamed answer, so a slow class learns its own slope.
//!   Before its first answer a backend has an optimistic prior, so new
//!   backends are tried rather than starved.
//!
//! The network's share is kept apart from the fit: the round trip the
//! route measures to each backend (its `/v1/models` probe, smoothed) is
//! added to the prediction, and the fit learns what is left, so a path
//! that slows down moves predictions at the next probe rather than after
//! a few hundred answers.
//!
//! End to end adds the output tokens (the request's limit or its model's
//! typical output) times the backend's learned time per output token.
//! [`Accuracy`] keeps the error of every prediction against what happened
//! (the fleet bench reports its MAPE).

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::prefix::{self, BLOCK_BYTES};

/// What the model knows of a request before it is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Work {
    /// The model or adapter it names ("" when none).
    pub model: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Estimated output tokens.
    pub output_tokens: u32,
    /// Bytes of prompt text.
    pub prompt_bytes: u64,
    /// The prompt's chained block hashes ([`prefix::blocks`]).
    pub blocks: Vec<u64>,
    /// Whether the answer streams (only then is its first token seen).
    pub stream: bool,
    /// Whether it is heavy for its route: placed by predicted completion
    /// rather than first token.
    pub heavy: bool,
}

impl Work {
    /// The cost of a parsed request: its tokens as `tokens` estimates them,
    /// its prompt's block hashes, and whether it is heavy for the route
    /// (which `heaviness` learns from it).
    pub fn of(
        shape: &super::request::Shape,
        tokens: &super::tokens::Tokens,
        heaviness: &Heaviness,
    ) -> Self {
        let mut w = Work {
            model: shape.model.clone(),
            prompt_tokens: tokens.prompt_tokens(&shape.model, shape.prompt_bytes),
            output_tokens: tokens.output_tokens(&shape.model, shape.max_tokens),
            prompt_bytes: shape.prompt_bytes,
            blocks: prefix::blocks(&shape.text),
            stream: shape.stream,
            heavy: false,
        };
        w.heavy = heaviness.judge(&w);
        w
    }

    /// Prompt tokens left to compute when `matched` leading blocks are
    /// cached.
    pub fn uncached(&self, matched: usize) -> u32 {
        let cached_bytes = (matched * BLOCK_BYTES) as u64;
        if self.prompt_bytes == 0 {
            return self.prompt_tokens;
        }
        let share = 1.0 - (cached_bytes as f64 / self.prompt_bytes as f64).min(1.0);
        (self.prompt_tokens as f64 * share).ceil() as u32
    }

    /// Tokens of work, prompt and output, for telling heavy from light.
    pub fn size(&self) -> u64 {
        self.prompt_tokens as u64 + 4 * self.output_tokens as u64
    }
}

/// A request's predicted cost on one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Seconds to the first token.
    pub ttft_s: f64,
    /// Seconds to the last.
    pub e2e_s: f64,
    /// Leading prompt blocks the backend holds.
    pub matched_blocks: usize,
    /// Prompt tokens it would compute.
    pub uncached_tokens: u32,
    /// Uncached prefill tokens already waiting there.
    pub prefill_ahead: u64,
    /// The network round trip included, seconds.
    pub network_s: f64,
    /// The features the TTFT came from.
    x: [f64; 3],
}

/// Forgetting factor of the fit: about the last 200 answers count.
const LAMBDA: f64 = 0.995;
/// The prior: 50 ms, 0.2 s per 1,000 prefill tokens, 10 ms per request in
/// flight: a fast backend, so an untried one gets tried.
const PRIOR: [f64; 3] = [0.05, 0.2, 0.01];
/// Seconds per output token before a backend has finished an answer.
const PRIOR_TPOT: f64 = 0.02;
/// Weight of each answer in the time per output token, once it has
/// learned from `1 / TPOT_ALPHA` answers; before that each weighs as much
/// as all before it, so one answer already outweighs the prior (a slow
/// class must not look fast for its first ten answers).
const TPOT_ALPHA: f64 = 0.1;
/// Weight of each probe in the round trip.
const RTT_ALPHA: f64 = 0.3;
/// Longest round trip believed, seconds (a probe's deadline is 2 s).
const MAX_RTT_S: f64 = 2.0;

/// Recursive least squares in three features.
#[derive(Debug, Clone)]
struct Rls {
    theta: [f64; 3],
    p: [[f64; 3]; 3],
}

impl Rls {
    fn new() -> Self {
        let mut p = [[0.0; 3]; 3];
        for (i, row) in p.iter_mut().enumerate() {
            row[i] = 10.0;
        }
        Self { theta: PRIOR, p }
    }

    fn update(&mut self, x: [f64; 3], y: f64) {
        let px: [f64; 3] = std::array::from_fn(|i| (0..3).map(|j| self.p[i][j] * x[j]).sum());
        let denom = LAMBDA + (0..3).map(|i| x[i] * px[i]).sum::<f64>();
        if !denom.is_finite() || denom <= 0.0 {
            return;
        }
        let k: [f64; 3] = std::array::from_fn(|i| px[i] / denom);
        let err = y - (0..3).map(|i| x[i] * self.theta[i]).sum::<f64>();
        for (t, ki) in self.theta.iter_mut().zip(k) {
            *t += ki * err;
        }
        // P = (P - k (P x)ᵀ) / λ; P is symmetric, so xᵀP = (P x)ᵀ.
        for (i, row) in self.p.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - k[i] * px[j]) / LAMBDA;
            }
        }
        let trace: f64 = (0..3).map(|i| self.p[i][i]).sum();
        // Features that stop varying make P grow without bound: start over
        // from what was learned, with the prior's confidence.
        if !trace.is_finite() || trace > 1e6 || self.theta.iter().any(|t| !t.is_finite()) {
            let theta = self.theta.map(|t| if t.is_finite() { t } else { 0.0 });
            *self = Self::new();
            self.theta = theta;
        }
    }
}

/// What a route has learned of one backend.
#[derive(Debug)]
pub struct Backend {
    /// Uncached prompt tokens sent there whose first token is still to
    /// come.
    prefill_ahead: AtomicU64,
    /// The TTFT fit; the hot path reads [`Self::theta`] instead.
    fit: Mutex<Rls>,
    theta: [AtomicU64; 3],
    /// Seconds per output token, as `f64` bits.
    tpot: AtomicU64,
    /// Answers the time per output token learned from.
    decodes: AtomicU64,
    /// Answers learned from.
    answers: AtomicU64,
    /// Smoothed probe round trip, seconds as `f64` bits (0: none yet).
    rtt: AtomicU64,
    /// When a request was last sent here, [`now_ms`].
    last_sent_ms: AtomicI64,
    /// The prefixes it computed lately.
    pub prefix: prefix::Index,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            prefill_ahead: AtomicU64::new(0),
            fit: Mutex::new(Rls::new()),
            theta: PRIOR.map(|t| AtomicU64::new(t.to_bits())),
            tpot: AtomicU64::new(PRIOR_TPOT.to_bits()),
            decodes: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            rtt: AtomicU64::new(0f64.to_bits()),
            last_sent_ms: AtomicI64::new(now_ms()),
            prefix: prefix::Index::default(),
        }
    }
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

/// Milliseconds since the process first asked: a clock an atomic holds.
fn now_ms() -> i64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as i64
}

impl Backend {
    /// The cost of `work` here, with `in_flight` requests already sent.
    pub fn predict(&self, work: &Work, in_flight: u64) -> Prediction {
        let matched = self.prefix.matched(&work.blocks);
        let uncached = work.uncached(matched);
        let ahead = self.prefill_ahead.load(Ordering::Relaxed);
        let x = [
            1.0,
            (ahead + uncached as u64) as f64 / 1000.0,
            in_flight as f64,
        ];
        // A fit's coefficient can dip below zero on noise: no backend gets
        // faster for more work.
        let network = load(&self.rtt);
        let ttft = (0..3)
            .map(|i| x[i] * load(&self.theta[i]).max(0.0))
            .sum::<f64>()
            .max(0.001)
            + network;
        Prediction {
            ttft_s: ttft,
            e2e_s: ttft + work.output_tokens as f64 * load(&self.tpot),
            matched_blocks: matched,
            uncached_tokens: uncached,
            prefill_ahead: ahead,
            network_s: network,
            x,
        }
    }

    /// Learns one probe's round trip (`s` seconds); a failed probe is not
    /// one.
    pub fn observe_rtt(&self, s: f64) {
        if !s.is_finite() || s < 0.0 {
            return;
        }
        let s = s.min(MAX_RTT_S);
        let old = load(&self.rtt);
        let new = if old == 0.0 {
            s
        } else {
            old + RTT_ALPHA * (s - old)
        };
        self.rtt.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The smoothed probe round trip, seconds (0 before the first).
    pub fn rtt(&self) -> f64 {
        load(&self.rtt)
    }

    /// How long since a request was last sent here: how stale what the
    /// model knows of it may be.
    pub fn unsent_for(&self) -> Duration {
        let ms = now_ms() - self.last_sent_ms.load(Ordering::Relaxed);
        Duration::from_millis(ms.max(0) as u64)
    }

    /// Makes the last request sent here `by` older (tests).
    #[cfg(test)]
    pub(crate) fn age(&self, by: Duration) {
        self.last_sent_ms
            .fetch_sub(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Answers learned from so far.
    pub fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    /// Learned seconds per 1,000 prefill tokens and per output token.
    pub fn speed(&self) -> (f64, f64) {
        (load(&self.theta[1]), load(&self.tpot))
    }

    /// Counts `work` against this backend until its answer comes back.
    pub fn dispatch(
        self: &Arc<Self>,
        work: &Work,
        p: Prediction,
        accuracy: Arc<Accuracy>,
    ) -> Dispatch {
        self.prefill_ahead
            .fetch_add(p.uncached_tokens as u64, Ordering::Relaxed);
        self.last_sent_ms.store(now_ms(), Ordering::Relaxed);
        Dispatch {
            backend: self.clone(),
            accuracy,
            sent: Instant::now(),
            first: None,
            p,
            stream: work.stream,
            output_tokens: work.output_tokens,
            blocks: work.blocks.clone(),
            events: 0,
            done: false,
            ok: false,
            explained: None,
            usage: None,
        }
    }

    /// Learns that a request predicted as `p` took `ttft` to its first
    /// token (what a [`Dispatch`] does; for tests that teach a backend).
    #[cfg(test)]
    pub(crate) fn teach(&self, p: &Prediction, ttft: f64) {
        self.prefill_ahead
            .fetch_add(p.uncached_tokens as u64, Ordering::Relaxed);
        self.first_token(p, ttft, true);
    }

    /// Sets the time per output token (tests).
    #[cfg(test)]
    pub(crate) fn set_tpot(&self, s: f64) {
        self.tpot.store(s.to_bits(), Ordering::Relaxed);
    }

    fn first_token(&self, p: &Prediction, ttft: f64, learn: bool) {
        self.prefill_ahead
            .fetch_sub(p.uncached_tokens as u64, Ordering::Relaxed);
        if !learn {
            return;
        }
        let mut fit = self.fit.lock().unwrap_or_else(|e| e.into_inner());
        // The fit learns the backend's own time; the network is measured.
        fit.update(p.x, (ttft - p.network_s).max(0.0));
        for (a, t) in self.theta.iter().zip(fit.theta) {
            a.store(t.to_bits(), Ordering::Relaxed);
        }
        self.answers.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request in flight on a backend, from the pick to its answer's end:
/// feed it the answer's body chunks ([`Self::chunk`]); dropping it learns.
#[derive(Debug)]
pub struct Dispatch {
    backend: Arc<Backend>,
    accuracy: Arc<Accuracy>,
    sent: Instant,
    first: Option<Instant>,
    p: Prediction,
    stream: bool,
    output_tokens: u32,
    blocks: Vec<u64>,
    /// Server-sent events seen (a token each, for engines that stream one
    /// token an event).
    events: u64,
    /// The stream's `[DONE]` was seen.
    done: bool,
    ok: bool,
    /// Where `route explain` shows this request, if it does.
    explained: Option<Arc<super::explain::Cell>>,
    /// Where the answer's `usage` calibrates tokens, if anywhere.
    usage: Option<UsageTap>,
}

/// What an answer's `usage` teaches: the model's bytes per token and its
/// typical output ([`super::tokens::Tokens::observe`]).
#[derive(Debug)]
struct UsageTap {
    tokens: Arc<super::tokens::Tokens>,
    model: String,
    prompt_bytes: u64,
    /// The answer's last bytes.
    tail: Vec<u8>,
}

impl Dispatch {
    /// Teaches `tokens` from the answer's `usage`, when it has one.
    pub fn tap_usage(
        &mut self,
        tokens: Arc<super::tokens::Tokens>,
        model: &str,
        prompt_bytes: u64,
    ) {
        self.usage = Some(UsageTap {
            tokens,
            model: model.to_string(),
            prompt_bytes,
            tail: Vec::new(),
        });
    }

    /// Reports the first token's time to `cell` too.
    pub fn explain(&mut self, cell: Arc<super::explain::Cell>) {
        self.explained = Some(cell);
    }

    /// The prediction the pick was made on.
    pub fn prediction(&self) -> &Prediction {
        &self.p
    }

    /// The backend answered with `ok` (a 2xx status): only good answers
    /// teach the model.
    pub fn answered(&mut self, ok: bool) {
        self.ok = ok;
    }

    /// One chunk of the answer's body.
    pub fn chunk(&mut self, data: &[u8]) {
        if self.first.is_none() && !data.is_empty() && self.stream {
            let now = Instant::now();
            self.first = Some(now);
            let ttft = (now - self.sent).as_secs_f64();
            self.backend.first_token(&self.p, ttft, self.ok);
            // The engine holds the prompt's blocks once it has computed them.
            self.backend.prefix.insert(&self.blocks);
            if self.ok {
                self.accuracy.ttft.record(self.p.ttft_s, ttft);
                if let Some(c) = &self.explained {
                    c.first_token(ttft);
                }
            }
        }
        if let Some(u) = &mut self.usage {
            // Keep the last USAGE_TAIL bytes only.
            let keep = super::tokens::USAGE_TAIL;
            if data.len() >= keep {
                u.tail.clear();
                u.tail.extend_from_slice(&data[data.len() - keep..]);
            } else {
                u.tail.extend_from_slice(data);
                let over = u.tail.len().saturating_sub(keep);
                u.tail.drain(..over);
            }
        }
        if self.stream {
            self.events += memchr_count(data, b"data:");
            self.done |= contains(data, b"[DONE]");
        }
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        let e2e = self.sent.elapsed().as_secs_f64();
        if self.first.is_none() {
            // A whole answer (not streamed) or none: the prefill is over
            // either way.
            self.backend.first_token(&self.p, e2e, false);
            if self.ok {
                self.backend.prefix.insert(&self.blocks);
            }
        }
        let complete = self.ok && (!self.stream || self.done);
        if !complete {
            return;
        }
        self.accuracy.e2e.record(self.p.e2e_s, e2e);
        if let Some(u) = &self.usage
            && let Some((prompt, completion)) = super::tokens::usage_in(&u.tail)
        {
            u.tokens
                .observe(&u.model, u.prompt_bytes, prompt, completion);
        }
        let (tokens, decode) = match self.first {
            // `data: [DONE]` is an event but not a token.
            Some(f) => (
                self.events.saturating_sub(1),
                (Instant::now() - f).as_secs_f64(),
            ),
            None => (self.output_tokens as u64, e2e - self.p.ttft_s),
        };
        if tokens >= 2 && decode > 0.0 {
            let x = decode / (tokens - 1) as f64;
            let old = load(&self.backend.tpot);
            let n = self.backend.decodes.fetch_add(1, Ordering::Relaxed) + 1;
            let new = old + TPOT_ALPHA.max(1.0 / n as f64) * (x - old);
            self.backend.tpot.store(new.to_bits(), Ordering::Relaxed);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn memchr_count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Absolute percentage errors of predictions, summed.
#[derive(Debug, Default)]
pub struct Errors {
    n: AtomicU64,
    /// Sum of |predicted − actual| / actual, in millionths.
    sum_ppm: AtomicU64,
}

impl Errors {
    fn record(&self, predicted: f64, actual: f64) {
        if actual <= 0.0 || !predicted.is_finite() {
            return;
        }
        let ape = ((predicted - actual).abs() / actual).min(1000.0);
        self.n.fetch_add(1, Ordering::Relaxed);
        self.sum_ppm
            .fetch_add((ape * 1e6) as u64, Ordering::Relaxed);
    }

    /// Predictions compared, and their mean absolute percentage error (a
    /// fraction).
    pub fn mape(&self) -> (u64, Option<f64>) {
        let n = self.n.load(Ordering::Relaxed);
        let sum = self.sum_ppm.load(Ordering::Relaxed) as f64 / 1e6;
        (n, (n > 0).then(|| sum / n as f64))
    }
}

/// How well a route's predictions matched.
#[derive(Debug, Default)]
pub struct Accuracy {
    /// Time to first token (streamed answers).
    pub ttft: Errors,
    /// End to end (complete answers).
    pub e2e: Errors,
}

/// A route's running measure of request size, for telling heavy requests
/// from light ones.
#[derive(Debug)]
pub struct Heaviness {
    /// Mean [`Work::size`], as `f64` bits.
    mean: AtomicU64,
}

impl Default for Heaviness {
    fn default() -> Self {
        Self {
            mean: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// Times the route's mean size a heavy request is.
pub const HEAVY_FACTOR: f64 = 2.0;

impl Heaviness {
    /// Whether `w` is heavy, learning its size.
    pub fn judge(&self, w: &Work) -> bool {
        let size = w.size() as f64;
        let old = load(&self.mean);
        let mean = if old == 0.0 {
            size
        } else {
            old + 0.02 * (size - old)
        };
        self.mean.store(mean.to_bits(), Ordering::Relaxed);
        old > 0.0 && size > HEAVY_FACTOR * old
    }
}

#[cfg(test)]
mod tests;
