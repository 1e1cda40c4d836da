//! A strict parser for the Prometheus text exposition format (0.0.4).
//!
//! Why not a crate: the candidates on crates.io (`prometheus-parse` and its
//! parent `prometheus-scrape`, `prometheus-exposition-format-rs`,
//! `prom_text_format_parser`) either skip lines they cannot parse without
//! saying so, are unmaintained, or pull in regex/chrono/nom for a format that
//! fits in a page. A scrape that feeds load balancing must reject garbage with a
//! clear error (line and column) rather than half-read it, and must bound its
//! work on hostile input; this parser does both, and is fuzzed by the test
//! suite with mutations of real exporter output.
//!
//! Accepted: `# HELP`, `# TYPE` and other comments; samples
//! `name{label="value",...} value [timestamp]` with `\\`, `\"` and `\n`
//! escapes, values as Go's `ParseFloat` reads them (`NaN`, `+Inf`, `-Inf`,
//! exponents); a missing final newline. Rejected with a located error:
//! anything else.

use std::collections::HashMap;

/// Limits that keep parsing of hostile input bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most samples accepted.
    pub max_samples: usize,
    /// Most labels on one sample.
    pub max_labels: usize,
    /// Longest line.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_samples: 200_000,
            max_labels: 64,
            max_line: 64 * 1024,
        }
    }
}

/// A parse error, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (bytes).
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

/// Metric type from `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// Summary (quantiles, `_sum`, `_count`).
    Summary,
    /// Untyped.
    Untyped,
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with any `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of a label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Samples in order.
    pub samples: Vec<Sample>,
    /// Types declared with `# TYPE`.
    pub types: HashMap<String, Kind>,
}

impl Exposition {
    /// Samples of one metric name.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Sum of every sample of `name` (for instance across GPUs or models).
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut it = self.series(name).peekable();
        it.peek()?;
        Some(it.map(|s| s.value).sum())
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl Cursor<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            col: self.i + 1,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn name(&mut self, metric: bool) -> Result<&str, ParseError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == b'_'
                || (metric && c == b':')
                || (self.i > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return self.err(if metric {
                "expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
            } else {
                "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            });
        }
        // Names are ASCII by construction.
        Ok(std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default())
    }

    fn label_value(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some(b'"') {
            return self.err("expected '\"' to open a label value");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated label value"),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'"') => out.push(b'"'),
                        Some(b'n') => out.push(b'\n'),
                        _ => {
                            return self
                                .err("invalid escape in label value (use \\\\, \\\" or \\n)");
                        }
                    }
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).or_else(|_| self.err("label value is not UTF-8"))
    }

    fn token(&mut self) -> &str {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'\t' {
                break;
            }
            self.i += 1;
        }
        std::str::from_utf8(&self.b[start..self.i]).unwrap_or("")
    }
}

/// Parses a float the way Prometheus (Go's `strconv.ParseFloat`) does.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust's parser also takes "inf", "infinity" and "nan" in any case; the
    // format does not.
    if s.is_empty()
        || s.bytes()
            .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E')
    {
        return None;
    }
    s.parse().ok()
}

/// Parses a whole exposition.
pub fn parse(text: &str, limits: &Limits) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (n, raw) in text.split('\n').enumerate() {
        let line_no = n + 1;
        if raw.len() > limits.max_line {
            return Err(ParseError {
                line: line_no,
                col: 1,
                message: format!("line longer than {} bytes", limits.max_line),
            });
        }
        let mut c = Cursor {
            b: raw.as_bytes(),
            i: 0,
            line: line_no,
        };
        c.skip_blanks();
        match c.peek() {
            None => continue,
            Some(b'#') => c.comment(&mut out.types)?,
            Some(_) => {
                if out.samples.len() >= limits.max_samples {
                    return c.err(format!("more than {} samples", limits.max_samples));
                }
                let sample = c.sample(limits)?;
                out.samples.push(sample);
            }
        }
    }
    Ok(out)
}

impl Cursor<'_> {
    /// A `#` line: a `TYPE` line is recorded in `types`, a `HELP` line's
    /// name is checked, other comments are ignored.
    fn comment(&mut self, types: &mut HashMap<String, Kind>) -> Result<(), ParseError> {
        self.i += 1;
        self.skip_blanks();
        let word = self.token().to_string();
        if word == "TYPE" {
            self.skip_blanks();
            let name = self.name(true)?.to_string();
            self.skip_blanks();
            let word = self.token().to_string();
            let kind = match word.as_str() {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                "summary" => Kind::Summary,
                "untyped" => Kind::Untyped,
                other => return self.err(format!("unknown metric type {other:?}")),
            };
            self.skip_blanks();
            if self.peek().is_some() {
                return self.err("unexpected text after the metric type");
            }
            if types.insert(name.clone(), kind).is_some() {
                return self.err(format!("second TYPE line for {name}"));
            }
        } else if word == "HELP" {
            self.skip_blanks();
            self.name(true)?;
        }
        Ok(())
    }

    /// A sample line: name, labels if any, value, and an optional
    /// timestamp (checked, not kept).
    fn sample(&mut self, limits: &Limits) -> Result<Sample, ParseError> {
        let name = self.name(true)?.to_string();
        let mut labels = Vec::new();
        self.skip_blanks();
        if self.peek() == Some(b'{') {
            self.i += 1;
            labels = self.labels(limits.max_labels)?;
        }
        self.skip_blanks();
        let vstart = self.i;
        let v = self.token().to_string();
        let Some(value) = parse_value(&v) else {
            self.i = vstart;
            return self.err(format!("invalid sample value {v:?}"));
        };
        self.skip_blanks();
        if self.peek().is_some() {
            let t = self.token().to_string();
            if t.parse::<i64>().is_err() {
                return self.err(format!("invalid timestamp {t:?}"));
            }
            self.skip_blanks();
            if self.peek().is_some() {
                return self.err("unexpected text after the timestamp");
            }
        }
        Ok(Sample {
            name,
            labels,
            value,
        })
    }

    /// `k="v", ...}`: a sample's labels, from just after the `{` to just
    /// after the `}`.
    fn labels(&mut self, max: usize) -> Result<Vec<(String, String)>, ParseError> {
        let mut labels: Vec<(String, String)> = Vec::new();
        loop {
            self.skip_blanks();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(labels);
            }
            if labels.len() >= max {
                return self.err(format!("more than {max} labels"));
            }
            let k = self.name(false)?.to_string();
            self.skip_blanks();
            if self.peek() != Some(b'=') {
                return self.err("expected '=' after the label name");
            }
            self.i += 1;
            self.skip_blanks();
            let v = self.label_value()?;
            if labels.iter().any(|(x, _)| *x == k) {
                return self.err(format!("label {k} repeated"));
            }
            labels.push((k, v));
            self.skip_blanks();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(labels);
                }
                _ => return self.err("expected ',' or '}' after a label"),
            }
        }
    }
}

/// Quantile `q` of a cumulative histogram given as (upper bound, count)
/// buckets, by linear interpolation inside the bucket (as Prometheus'
/// `histogram_quantile`). `None` with no observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(le, c)| !le.is_nan() && !c.is_nan())
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut prev = (0.0f64, 0.0f64);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: report that bound.
                return Some(prev.0);
            }
            let lower = if prev.0 > 0.0 || prev.1 > 0.0 {
                prev.0
            } else {
                0.0
            };
            let in_bucket = count - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - prev.1) / in_bucket);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Exposition, ParseError> {
        parse(s, &Limits::default())
    }

    #[test]
    fn parses_the_format() {
        let e = p(concat!(
            "# HELP x_total Things.\n",
            "# TYPE x_total counter\n",
            "x_total{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 3.5e2 1700000000000\n",
            "vllm:num_requests_waiting{model_name=\"m\",} 4\n",
            "up NaN\n",
            "down +Inf\n",
            "  # indented comment\n",
            "\n",
            "last -Inf"
        ))
        .unwrap();
        assert_eq!(e.samples.len(), 5);
        assert_eq!(e.samples[0].value, 350.0);
        assert_eq!(e.samples[0].label("b"), Some("q\"uo\\te\n"));
        assert_eq!(e.samples[1].label("model_name"), Some("m"));
        assert!(e.samples[2].value.is_nan());
        assert_eq!(e.types.get("x_total"), Some(&Kind::Counter));
        assert_eq!(e.sum("vllm:num_requests_waiting"), Some(4.0));
    }

    #[test]
    fn errors_are_located() {
        for (src, line, col, msg) in [
            ("ok 1\nbad{a=1} 2", 2, 7, "'\"'"),
            ("x{a=\"1\" 2", 1, 9, "',' or '}'"),
            ("x 1 2 3", 1, 7, "after the timestamp"),
            ("x one", 1, 3, "invalid sample value"),
            ("x inf", 1, 3, "invalid sample value"),
            ("9x 1", 1, 1, "metric name"),
            ("x{9=\"a\"} 1", 1, 3, "label name"),
            ("x{a=\"\\q\"} 1", 1, 7, "escape"),
            ("# TYPE x whatever", 1, 18, "unknown metric type"),
            ("x{a=\"1\",a=\"2\"} 1", 1, 14, "repeated"),
            ("x{a=\"1", 1, 7, "unterminated"),
        ] {
            let e = p(src).unwrap_err();
            assert_eq!((e.line, e.col), (line, col), "{src:?}: {e}");
            assert!(e.message.contains(msg), "{src:?}: {e}");
        }
    }

    #[test]
    fn limits_hold() {
        let l = Limits {
            max_samples: 2,
            max_labels: 1,
            max_line: 16,
        };
        assert!(parse("a 1\nb 1\nc 1", &l).is_err());
        assert!(parse("a{x=\"1\",y=\"2\"} 1", &l).is_err());
        assert!(parse(&"a".repeat(17), &l).is_err());
    }

    #[test]
    fn quantiles() {
        let b = [
            (0.1, 10.0),
            (0.5, 60.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.1, &b), Some(0.1));
        let med = histogram_quantile(0.5, &b).unwrap();
        assert!((med - 0.42).abs() < 1e-9, "{med}");
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
        // Everything above the top finite bound.
        assert_eq!(
            histogram_quantile(0.9, &[(1.0, 0.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
    }
}
