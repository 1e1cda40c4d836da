//! The frequency half of the policy's scoring: a count-min sketch of 4-bit
//! counters that forgets by halving.

/// The sketch's least size in 64-bit words (16 counters each): 8 KiB, or
/// 40 KiB per store shard with the four shadows' sketches. A
/// cache of a few dozen entries still compares keys drawn from thousands;
/// with one word per entry their counters collide until every estimate is
/// noise (a 10-entry cache on a 1,000-key loop then churned and never hit).
const SKETCH_MIN_WORDS: usize = 1024;
/// Halving waits for at least `10 ×` this many accesses, so that a small
/// cache still sees a key come back before its count is halved away.
const SKETCH_MIN_HISTORY: usize = 128;

/// A count-min sketch of 4-bit counters with periodic halving.
#[derive(Debug, Clone)]
pub struct Sketch {
    table: Vec<u64>,
    mask: usize,
    additions: u64,
    sample: u64,
}

impl Sketch {
    /// A sketch for about `capacity` distinct hot items.
    pub fn new(capacity: usize) -> Self {
        let words = capacity.max(SKETCH_MIN_WORDS).next_power_of_two();
        Self {
            table: vec![0; words],
            mask: words - 1,
            additions: 0,
            sample: 10 * capacity.max(SKETCH_MIN_HISTORY) as u64,
        }
    }

    fn slots(&self, h: u64) -> [(usize, u32); 4] {
        let mut out = [(0usize, 0u32); 4];
        let mut x = h;
        for (i, o) in out.iter_mut().enumerate() {
            x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31) ^ (i as u64);
            // Each row uses its own 16 counters of the word.
            *o = ((x >> 8) as usize & self.mask, ((x & 15) as u32) * 4);
        }
        out
    }

    /// Estimated frequency (0..=15).
    pub fn estimate(&self, h: u64) -> u32 {
        self.slots(h)
            .iter()
            .map(|(w, s)| ((self.table[*w] >> s) & 15) as u32)
            .min()
            .unwrap_or(0)
    }

    /// Counts one access.
    pub fn increment(&mut self, h: u64) {
        let slots = self.slots(h);
        let min = self.estimate(h);
        let mut added = false;
        for (w, s) in slots {
            let v = (self.table[w] >> s) & 15;
            // Conservative update: only the minimal counters grow.
            if v == min as u64 && v < 15 {
                self.table[w] += 1 << s;
                added = true;
            }
        }
        if added {
            self.additions += 1;
            if self.additions >= self.sample {
                for word in &mut self.table {
                    // Halve all 16 counters of the word at once.
                    *word = (*word >> 1) & 0x7777_7777_7777_7777;
                }
                self.additions /= 2;
            }
        }
    }
}
