//! Request traces: arrival time, prompt and output sizes, and (Mooncake)
//! the prompt's prefix blocks.
//!
//! Formats, by file name:
//! - `*.csv` with the header `TIMESTAMP,ContextTokens,GeneratedTokens`: the
//!   Azure LLM inference traces (timestamps `YYYY-MM-DD HH:MM:SS.fffffff`);
//! - `*.jsonl`: Mooncake (`timestamp` in ms, `input_length`,
//!   `output_length`, `hash_ids` one per 512-token block).
//!
//! A malformed row fails the load, naming the file and line.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// Tokens per Mooncake `hash_ids` block.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;
/// Largest trace file read.
pub const MAX_TRACE_BYTES: u64 = 512 << 20;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Arrival, seconds from the trace's first row.
    pub at_s: f64,
    /// Prompt tokens (at least 1).
    pub prompt_tokens: u32,
    /// Output tokens (at least 1).
    pub output_tokens: u32,
    /// Prefix block ids, one per [`MOONCAKE_BLOCK_TOKENS`], when the trace
    /// has them.
    pub blocks: Option<Vec<u64>>,
}

/// Reads a trace, rows in arrival order.
pub fn load(path: &Path) -> Result<Vec<Row>> {
    let shown = path.display().to_string();
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading trace {shown}"))?
        .len();
    ensure!(
        len <= MAX_TRACE_BYTES,
        "trace {shown}: {len} bytes, at most {MAX_TRACE_BYTES}"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading trace {shown}"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows = if name.ends_with(".jsonl") {
        mooncake(&text)
    } else if name.ends_with(".csv") {
        azure(&text)
    } else {
        bail!("trace {shown}: unknown format (*.csv: Azure LLM inference; *.jsonl: Mooncake)")
    }
    .with_context(|| format!("trace {shown}"))?;
    ensure!(!rows.is_empty(), "trace {shown}: no requests");
    // Sorted upstream; a stable sort keeps equal stamps in file order.
    rows.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let t0 = rows[0].at_s;
    for r in &mut rows {
        r.at_s -= t0;
    }
    spread_equal_stamps(&mut rows);
    Ok(rows)
}

/// Mooncake's stamps are coarse (up to 16 requests share one, about 3 s
/// apart): requests that share a stamp are spread evenly over the gap to
/// the next one, so one stamp does not become one instant. Distinct stamps
/// (all of Azure's) are left as they are.
fn spread_equal_stamps(rows: &mut [Row]) {
    let mut i = 0;
    while i < rows.len() {
        let j = i + rows[i..]
            .iter()
            .take_while(|r| r.at_s == rows[i].at_s)
            .count();
        if j - i > 1 {
            let next = rows.get(j).map_or(rows[i].at_s + 1.0, |r| r.at_s);
            let step = (next - rows[i].at_s) / (j - i) as f64;
            let base = rows[i].at_s;
            for (k, r) in rows[i..j].iter_mut().enumerate() {
                r.at_s = base + k as f64 * step;
            }
        }
        i = j;
    }
}

fn tokens(v: i64, what: &str) -> Result<u32> {
    ensure!((0..=1 << 24).contains(&v), "{what} {v}: use 0 to 16777216");
    Ok((v as u32).max(1))
}

/// Azure: `TIMESTAMP,ContextTokens,GeneratedTokens`.
fn azure(text: &str) -> Result<Vec<Row>> {
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
    ensure!(
        header == "TIMESTAMP,ContextTokens,GeneratedTokens",
        "line 1: header {header:?}, not TIMESTAMP,ContextTokens,GeneratedTokens"
    );
    let mut rows = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = (|| -> Result<Row> {
            let mut f = line.split(',');
            let (Some(ts), Some(ctx), Some(generated), None) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                bail!("three fields expected");
            };
            Ok(Row {
                at_s: timestamp_secs(ts)?,
                prompt_tokens: tokens(
                    ctx.trim().parse().context("ContextTokens")?,
                    "ContextTokens",
                )?,
                output_tokens: tokens(
                    generated.trim().parse().context("GeneratedTokens")?,
                    "GeneratedTokens",
                )?,
                blocks: None,
            })
        })()
        .with_context(|| format!("line {}: {line:?}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` as seconds since 1970 (no zone): the
/// Azure traces' and the NAB series' timestamps.
pub fn timestamp_secs(s: &str) -> Result<f64> {
    let (date, time) = s
        .trim()
        .split_once(' ')
        .context("TIMESTAMP: date and time expected")?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("TIMESTAMP date")?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("TIMESTAMP time")?;
    ensure!(
        d.len() == 3 && t.len() == 3,
        "TIMESTAMP {s:?}: YYYY-MM-DD HH:MM:SS expected"
    );
    ensure!(
        (1..=12).contains(&d[1])
            && (1..=31).contains(&d[2])
            && (0..24).contains(&t[0])
            && (0..60).contains(&t[1])
            && (0..=60).contains(&t[2]),
        "TIMESTAMP {s:?}: out of range"
    );
    ensure!(
        frac.bytes().all(|b| b.is_ascii_digit()),
        "TIMESTAMP {s:?}: bad fraction"
    );
    let frac: f64 = format!("0.{frac}").parse().context("TIMESTAMP fraction")?;
    Ok((days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(Deserialize)]
struct MooncakeRow {
    timestamp: i64,
    input_length: i64,
    output_length: i64,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

/// Mooncake: one JSON object a line.
fn mooncake(text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = (|| -> Result<Row> {
            let r: MooncakeRow = serde_json::from_str(line)?;
            ensure!(r.timestamp >= 0, "timestamp {} is negative", r.timestamp);
            let prompt = tokens(r.input_length, "input_length")?;
            ensure!(
                r.hash_ids.len() as u64 <= (prompt as u64).div_ceil(MOONCAKE_BLOCK_TOKENS as u64),
                "{} hash_ids for {prompt} tokens of {MOONCAKE_BLOCK_TOKENS}-token blocks",
                r.hash_ids.len()
            );
            Ok(Row {
                at_s: r.timestamp as f64 / 1e3,
                prompt_tokens: prompt,
                output_tokens: tokens(r.output_length, "output_length")?,
                blocks: Some(r.hash_ids),
            })
        })()
        .with_context(|| format!("line {}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_rows_and_timestamps() {
        let rows = azure("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,4808,10\r\n2023-11-16 18:17:04.0319600,3180,8").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(
            (rows[1].at_s - rows[0].at_s - 0.052).abs() < 1e-6,
            "{rows:?}"
        );
        assert_eq!((rows[0].prompt_tokens, rows[0].output_tokens), (4808, 10));
        assert_eq!(timestamp_secs("1970-01-02 00:00:01").unwrap(), 86_401.0);
        assert_eq!(
            timestamp_secs("2000-03-01 00:00:00").unwrap(),
            951_868_800.0
        );
    }

    #[test]
    fn bad_rows_name_their_line() {
        let cases = [
            ("TIMESTAMP,Context\n", "header"),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,x,1\n",
                "line 2",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:17:03,1,1\n",
                "out of range",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,1,1\n",
                "three fields",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,-5,1\n",
                "use 0",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", azure(text).unwrap_err());
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
        let e = format!("{:#}", mooncake("{\"timestamp\": 0}\n").unwrap_err());
        assert!(e.contains("line 1") && e.contains("input_length"), "{e}");
        let e = format!(
            "{:#}",
            mooncake("{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [1, 2]}\n")
                .unwrap_err()
        );
        assert!(e.contains("2 hash_ids"), "{e}");
    }

    #[test]
    fn shared_stamps_are_spread_to_the_next() {
        let row = |t| Row {
            at_s: t,
            prompt_tokens: 1,
            output_tokens: 1,
            blocks: None,
        };
        let mut rows = vec![row(0.0), row(0.0), row(0.0), row(3.0), row(4.0)];
        spread_equal_stamps(&mut rows);
        let at: Vec<f64> = rows.iter().map(|r| r.at_s).collect();
        assert_eq!(at, [0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn the_shared_traces_load() {
        for (f, n) in [
            ("traces/arrivals/AzureLLMInferenceTrace_code.csv", 8819),
            ("traces/arrivals/AzureLLMInferenceTrace_conv.csv", 19_366),
            ("traces/arrivals/mooncake-conversation_trace.jsonl", 12_031),
        ] {
            let rows = load(&crate::shared_data(f)).unwrap();
            assert_eq!(rows.len(), n, "{f}");
            assert_eq!(rows[0].at_s, 0.0);
            let span = rows.last().unwrap().at_s;
            assert!((3000.0..3700.0).contains(&span), "{f}: {span} s");
            assert!(rows.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        }
    }
}
