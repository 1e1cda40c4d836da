//! Internet (ones' complement) checksums.
//!
//! Sums are accumulated over 16-bit words in memory order in a `u32`/`u64` and
//! folded at the end; the ones' complement sum is byte-order independent, so the
//! folded result is stored back as is.

/// Folds a 64-bit accumulator to the final 16-bit checksum (complemented).
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Adds a 32-bit word (memory order) to an accumulator as two 16-bit words.
#[inline(always)]
pub fn add32(sum: u64, w: u32) -> u64 {
    sum + (w & 0xffff) as u64 + (w >> 16) as u64
}

/// Sum of the 16-bit words of a 20-byte IPv4 header held in memory as 5 words.
#[inline(always)]
pub fn ipv4_header(words: &[u32; 5]) -> u16 {
    let mut s = 0u64;
    s = add32(s, words[0]);
    s = add32(s, words[1]);
    s = add32(s, words[2]);
    s = add32(s, words[3]);
    s = add32(s, words[4]);
    fold(s)
}
