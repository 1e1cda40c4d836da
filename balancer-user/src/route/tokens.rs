//! Tokens from bytes, calibrated per model from the `usage` backends
//! return: each answer's prompt tokens against the prompt bytes the
//! gateway counted teach that model's bytes per token, and its completion
//! tokens the model's typical output, for requests that name no limit.
//!
//! Readers (every request) load an immutable snapshot of the per-model
//! table and read atomics; only the first answer from a model not seen yet
//! swaps in a new table. At most [`MAX_MODELS`] models are learned, so
//! clients naming random models cannot grow it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

/// Bytes per token before a model has answered (English text with
/// BPE tokenizers is about four).
pub const DEFAULT_BYTES_PER_TOKEN: f64 = 4.0;
/// Output tokens assumed before a model has answered.
pub const DEFAULT_OUTPUT_TOKENS: f64 = 256.0;
/// Most models calibrated.
pub const MAX_MODELS: usize = 1024;
/// Weight of each new observation in the moving averages.
const ALPHA: f64 = 0.1;

/// One model's learned figures, as `f64` bits.
#[derive(Debug)]
struct Learned {
    bytes_per_token: AtomicU64,
    output_tokens: AtomicU64,
}

impl Learned {
    fn new() -> Self {
        Self {
            bytes_per_token: AtomicU64::new(DEFAULT_BYTES_PER_TOKEN.to_bits()),
            output_tokens: AtomicU64::new(DEFAULT_OUTPUT_TOKENS.to_bits()),
        }
    }
}

/// Moves `cell` a step towards `x` (lost races lose one observation, which
/// an average of many does not miss).
fn blend(cell: &AtomicU64, x: f64) {
    let old = f64::from_bits(cell.load(Ordering::Relaxed));
    let new = old + ALPHA * (x - old);
    cell.store(new.to_bits(), Ordering::Relaxed);
}

/// The per-model calibration of one gateway.
#[derive(Debug, Default)]
pub struct Tokens {
    models: ArcSwap<HashMap<String, Arc<Learned>>>,
}

impl Tokens {
    /// Estimated tokens of `bytes` of prompt text for `model` (at least 1).
    pub fn prompt_tokens(&self, model: &str, bytes: u64) -> u32 {
        let per = self
            .models
            .load()
            .get(model)
            .map_or(DEFAULT_BYTES_PER_TOKEN, |l| {
                f64::from_bits(l.bytes_per_token.load(Ordering::Relaxed))
            });
        ((bytes as f64 / per).ceil() as u32).max(1)
    }

    /// Output tokens to expect from a request for `model` that names
    /// `max_tokens` (its limit) or none (the model's typical output).
    pub fn output_tokens(&self, model: &str, max_tokens: Option<u32>) -> u32 {
        if let Some(m) = max_tokens {
            return m;
        }
        let typical = self
            .models
            .load()
            .get(model)
            .map_or(DEFAULT_OUTPUT_TOKENS, |l| {
                f64::from_bits(l.output_tokens.load(Ordering::Relaxed))
            });
        typical.round() as u32
    }

    /// Learns from one answer: `bytes` of prompt text the gateway counted,
    /// and the `usage` the backend returned. Implausible figures (no
    /// tokens, or under one byte or over 64 bytes a token) are ignored.
    pub fn observe(&self, model: &str, bytes: u64, prompt_tokens: u64, completion_tokens: u64) {
        if prompt_tokens == 0 || bytes == 0 {
            return;
        }
        let per = bytes as f64 / prompt_tokens as f64;
        if !(1.0..=64.0).contains(&per) {
            return;
        }
        let Some(l) = self.learned(model) else {
            return;
        };
        blend(&l.bytes_per_token, per);
        blend(&l.output_tokens, completion_tokens as f64);
    }

    /// `model`'s entry, made on first sight while there is room.
    fn learned(&self, model: &str) -> Option<Arc<Learned>> {
        if let Some(l) = self.models.load().get(model) {
            return Some(l.clone());
        }
        let mut out = None;
        self.models.rcu(|m| {
            if let Some(l) = m.get(model) {
                out = Some(l.clone());
                return m.clone();
            }
            if m.len() >= MAX_MODELS {
                out = None;
                return m.clone();
            }
            let mut next = HashMap::clone(m);
            let l = Arc::new(Learned::new());
            out = Some(l.clone());
            next.insert(model.to_string(), l);
            Arc::new(next)
        });
        out
    }

    /// Models calibrated so far.
    pub fn models(&self) -> usize {
        self.models.load().len()
    }
}

/// Bytes of an answer's end kept to find its `usage` in.
pub const USAGE_TAIL: usize = 2048;

/// The `usage` an OpenAI-style answer ends with: its prompt and completion
/// tokens, read from the answer's last bytes (`tail`, at most
/// [`USAGE_TAIL`]; a whole JSON body or the last events of a stream with
/// `stream_options.include_usage`). `None` when either is missing.
pub fn usage_in(tail: &[u8]) -> Option<(u64, u64)> {
    let at = tail.windows(7).rposition(|w| w == b"\"usage\"")?;
    let rest = &tail[at..];
    Some((
        number_after(rest, b"\"prompt_tokens\"")?,
        number_after(rest, b"\"completion_tokens\"")?,
    ))
}

/// The integer after `key` and its colon in `s`.
fn number_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let at = s.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &s[at..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let digits: Vec<u8> = rest[colon + 1..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .take(12)
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_an_answers_end() {
        // (what, the answer's end, (prompt, completion) tokens)
        type Case<'a> = (&'a str, &'a [u8], Option<(u64, u64)>);
        let cases: &[Case] = &[
            (
                "a whole body",
                br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
                Some((12, 3)),
            ),
            (
                "the usage event of a stream",
                b"data: {\"choices\":[]}\n\ndata: {\"usage\": {\"completion_tokens\": 7, \"prompt_tokens\": 40}}\n\ndata: [DONE]\n\n",
                Some((40, 7)),
            ),
            ("no usage", br#"{"choices":[]}"#, None),
            ("a cut number", br#"{"usage":{"prompt_tokens":"#, None),
            ("not a number", br#"{"usage":{"prompt_tokens":"x","completion_tokens":1}}"#, None),
        ];
        for (what, tail, want) in cases {
            assert_eq!(usage_in(tail), *want, "{what}");
        }
    }

    #[test]
    fn defaults_until_a_model_answers() {
        let t = Tokens::default();
        assert_eq!(t.prompt_tokens("m", 4000), 1000);
        assert_eq!(t.prompt_tokens("m", 0), 1, "never zero");
        assert_eq!(t.output_tokens("m", None), 256);
        assert_eq!(t.output_tokens("m", Some(7)), 7, "a limit wins");
    }

    #[test]
    fn usage_calibrates_each_model_on_its_own() {
        let t = Tokens::default();
        // A tokenizer at 2 bytes a token answering 50 tokens each time.
        for _ in 0..100 {
            t.observe("cjk", 2000, 1000, 50);
        }
        let est = t.prompt_tokens("cjk", 2000);
        assert!((990..=1010).contains(&est), "{est}");
        assert!((49..=51).contains(&t.output_tokens("cjk", None)));
        assert_eq!(
            t.prompt_tokens("other", 4000),
            1000,
            "other models keep the default"
        );
    }

    #[test]
    fn implausible_usage_is_ignored_and_the_table_is_bounded() {
        let t = Tokens::default();
        t.observe("m", 10, 0, 5);
        t.observe("m", 10_000, 1, 5); // 10,000 bytes a token
        t.observe("m", 1, 1000, 5); // a thousandth of a byte a token
        assert_eq!(t.models(), 0);
        for i in 0..MAX_MODELS + 10 {
            t.observe(&format!("m{i}"), 400, 100, 1);
        }
        assert_eq!(t.models(), MAX_MODELS);
    }
}
