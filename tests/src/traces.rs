//! Readers for the cache traces in `shared/data/traces/cache/` (formats in
//! its SOURCES.md) and the Mooncake prefix-block trace.

use std::{io::Read, path::Path};

use anyhow::{Context, Result, bail};

/// One access.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Access {
    /// Object id.
    pub key: u64,
    /// Object size, bytes (1 for traces without sizes).
    pub size: u32,
    /// What a miss costs (1 for traces without costs).
    pub cost: f32,
}

/// A loaded trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Short name.
    pub name: String,
    /// Accesses in order.
    pub accesses: Vec<Access>,
    /// Whether sizes are real.
    pub sized: bool,
    /// Whether costs are real.
    pub costed: bool,
}

impl Trace {
    /// Distinct keys and their total size.
    pub fn footprint(&self) -> (usize, u64) {
        let mut seen = std::collections::HashMap::new();
        for a in &self.accesses {
            seen.insert(a.key, a.size as u64);
        }
        (seen.len(), seen.values().sum())
    }
}

/// The trace files this module reads, by name.
pub const TRACES: &[&str] = &[
    "OLTP.lis.zst",
    "P3.lis.zst",
    "P6.lis.zst",
    "lirs-2_pools.trace.gz",
    "lirs-backf.trace.gz",
    "lirs-cpp.trace.gz",
    "lirs-cs.trace.gz",
    "lirs-gli.trace.gz",
    "lirs-loop.trace.gz",
    "lirs-multi1.trace.gz",
    "lirs-multi2.trace.gz",
    "lirs-multi3.trace.gz",
    "lirs-ps.trace.gz",
    "lirs-scan.trace.gz",
    "lirs-sprite.trace.gz",
    "lirs-zigzag.trace.gz",
    "cache2k-web07.trace.xz",
    "adapt_size-request.trace.xz",
    "address_penalties-gcc.trace.xz",
];

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".zst") {
        out = zstd::stream::decode_all(&raw[..]).context("zstd")?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .context("gzip")?;
    } else if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| anyhow::anyhow!("xz: {e}"))?;
    } else {
        out = raw;
    }
    Ok(out)
}

fn unit(key: u64) -> Access {
    Access {
        key,
        size: 1,
        cost: 1.0,
    }
}

/// Loads a trace by file name from `dir`, stopping after `limit` accesses.
pub fn load(dir: &Path, file: &str, limit: usize) -> Result<Trace> {
    let path = dir.join(file);
    let data = decompress(&path).with_context(|| format!("decompressing {}", path.display()))?;
    let name = file
        .trim_end_matches(".zst")
        .trim_end_matches(".gz")
        .trim_end_matches(".xz")
        .trim_end_matches(".trace")
        .trim_end_matches(".lis")
        .to_string();
    let mut acc = Vec::new();
    let (mut sized, mut costed) = (false, false);
    let text = || std::str::from_utf8(&data).context("trace is not text");
    let bad = |n: usize, l: &str| anyhow::anyhow!("{file}:{}: cannot parse {l:?}", n + 1);
    if file.ends_with(".lis.zst") {
        // `start count ignore request`: `count` blocks from `start`.
        'outer: for (n, l) in text()?.lines().enumerate() {
            let mut f = l.split_ascii_whitespace();
            let start: u64 = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(n, l))?;
            let count: u64 = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(n, l))?;
            for b in start..start + count {
                if acc.len() >= limit {
                    break 'outer;
                }
                acc.push(unit(b));
            }
        }
    } else if file.starts_with("lirs-") {
        for (n, l) in text()?.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l == "*" {
                continue;
            }
            if acc.len() >= limit {
                break;
            }
            acc.push(unit(l.parse().map_err(|_| bad(n, l))?));
        }
    } else if file.starts_with("cache2k-") {
        if data.len() % 4 != 0 {
            bail!(
                "{file}: {} bytes is not a whole number of 32-bit keys",
                data.len()
            );
        }
        for c in data.chunks_exact(4).take(limit) {
            let k = i32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            acc.push(unit(k as u32 as u64));
        }
    } else if file.starts_with("adapt_size-") {
        sized = true;
        for (n, l) in text()?.lines().enumerate().take(limit) {
            let f: Vec<&str> = l.split(' ').collect();
            let [_, id, size] = f[..] else {
                return Err(bad(n, l));
            };
            let id: u64 = id.parse().map_err(|_| bad(n, l))?;
            let size: u64 = size.parse().map_err(|_| bad(n, l))?;
            // As AdaptSize: the same id with another size is another object.
            acc.push(Access {
                key: id ^ size.rotate_left(40),
                size: size.clamp(1, u32::MAX as u64) as u32,
                cost: 1.0,
            });
        }
    } else if file.starts_with("address_penalties-") {
        costed = true;
        for (n, l) in text()?.lines().enumerate().take(limit) {
            let f: Vec<&str> = l.split(' ').collect();
            let [_, addr, _, hit, miss] = f[..] else {
                return Err(bad(n, l));
            };
            let key =
                u64::from_str_radix(addr.trim_start_matches("0x"), 16).map_err(|_| bad(n, l))?;
            let hit: f32 = hit.parse().map_err(|_| bad(n, l))?;
            let miss: f32 = miss.parse().map_err(|_| bad(n, l))?;
            acc.push(Access {
                key,
                size: 1,
                // What a hit saves over a miss.
                cost: (miss - hit).max(0.0),
            });
        }
    } else {
        bail!(
            "{file}: unknown trace format (known by name: *.lis[.zst], lirs-*, cache2k-*, adapt_size-*, address_penalties-*, optionally .gz/.xz/.zst; *.jsonl for Mooncake)"
        );
    }
    Ok(Trace {
        name,
        accesses: acc,
        sized,
        costed,
    })
}

/// The Mooncake conversation trace as a prefix-block (KV-cache) trace: each
/// request touches its 512-token blocks in order.
pub fn load_mooncake(path: &Path, limit: usize) -> Result<Trace> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut acc = Vec::new();
    'outer: for (n, l) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        let ids = v
            .get("hash_ids")
            .and_then(|h| h.as_array())
            .with_context(|| format!("{}:{}: no hash_ids", path.display(), n + 1))?;
        for id in ids {
            if acc.len() >= limit {
                break 'outer;
            }
            acc.push(unit(id.as_u64().with_context(|| {
                format!("{}:{}: bad id", path.display(), n + 1)
            })?));
        }
    }
    Ok(Trace {
        name: "mooncake-prefix".into(),
        accesses: acc,
        sized: false,
        costed: false,
    })
}
