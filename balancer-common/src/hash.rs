//! The flow hash, shared so that userspace can predict the data path's choices.
//!
//! The XDP program hashes a connection's 5-tuple (or, for client-affinity VIPs, only
//! the client address) and maps the hash onto a Maglev ring slot. Tests and the
//! control plane use these same functions to compute which backend a packet must
//! reach. Each 32-bit word costs an xor, a multiply and a rotate, which the BPF
//! JIT turns into a handful of instructions; a Murmur3 finaliser gives the
//! avalanche that slot selection and receive-side scaling need.

/// Seed of the flow hash. Fixed, so every gateway behind ECMP hashes alike.
pub const FLOW_HASH_SEED: u32 = 0x6261_6c61; // "bala"

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const K64: u64 = 0x9e37_79b9_7f4a_7c15;
/// 64-bit seed of the flow hash.
const FLOW_SEED64: u64 = 0x6261_6c61_6e63_6572; // "balancer"

#[inline(always)]
const fn step64(h: u64, w: u32) -> u64 {
    (h ^ w as u64).wrapping_mul(K64).rotate_left(29)
}

#[inline(always)]
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A connection's 64-bit hash. Its low half places the connection (ring slot,
/// tunnel source, connection-table set); its high half is the tag that tells
/// connections in one set apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowHash(pub u64);

impl FlowHash {
    /// The 32-bit placement hash.
    #[inline(always)]
    pub const fn ring(self) -> u32 {
        self.0 as u32
    }

    /// The connection-table tag, never 0 (0 marks an empty entry).
    #[inline(always)]
    pub const fn tag(self) -> u32 {
        (self.0 >> 32) as u32 | 1
    }
}

/// Hashes an IPv4 5-tuple. `src`, `dst` and `ports` are the raw words as read from
/// the packet (network byte order); `ports` is source port then destination port.
#[inline(always)]
pub const fn flow_hash_v4(src: u32, dst: u32, ports: u32, proto: u8) -> FlowHash {
    let h = step64(FLOW_SEED64, src);
    let h = step64(h, dst);
    let h = step64(h, ports);
    let h = step64(h, proto as u32);
    FlowHash(fmix64(h))
}

/// Hashes an IPv6 5-tuple, words as read from the packet.
#[inline(always)]
pub const fn flow_hash_v6(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8) -> FlowHash {
    let mut h = FLOW_SEED64 ^ 6;
    h = step64(h, src[0]);
    h = step64(h, src[1]);
    h = step64(h, src[2]);
    h = step64(h, src[3]);
    h = step64(h, dst[0]);
    h = step64(h, dst[1]);
    h = step64(h, dst[2]);
    h = step64(h, dst[3]);
    h = step64(h, ports);
    h = step64(h, proto as u32);
    FlowHash(fmix64(h))
}

/// Hashes a client address alone, for client-affinity VIPs. IPv4 addresses use
/// only the first word; the rest are zero.
#[inline(always)]
pub const fn client_hash(addr: &[u32; 4]) -> u32 {
    let mut h = FLOW_HASH_SEED ^ 0x5a5a_5a5a;
    h = mix(h, addr[0]);
    h = mix(h, addr[1]);
    h = mix(h, addr[2]);
    h = mix(h, addr[3]);
    finish(h, 16)
}

/// Maps a 32-bit hash onto `0..ring_size` with a multiply and a shift (Lemire's
/// range reduction) instead of a division: cheaper in the JIT and just as uniform.
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

/// Home slot hash of a VIP in the VIP table (see [`crate::VipSlot`]): the
/// address words and the key's last word (port, protocol, family as laid out
/// in [`crate::VipKey`]), multiplied in. The caller masks it to the table size.
#[inline(always)]
pub const fn vip_slot_hash(addr: &[u32; 4], tail: u32) -> u32 {
    let h = (addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24))
        .wrapping_mul(0x9e37_79b1);
    let h = (h ^ tail).wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 16)
}

/// The last word of a [`crate::VipKey`] (port, protocol, family) as a
/// little-endian load of its last four bytes reads it.
#[inline(always)]
pub const fn vip_key_tail(port: u16, proto: u8, family: u8) -> u32 {
    port as u32 | (proto as u32) << 16 | (family as u32) << 24
}

/// Bit index of an address in the VIP prefilter (see [`crate::VipFilter`]).
/// `first_word` is the address's first 32-bit word as read from the packet and
/// `last_word` its last one (the same word for IPv4).
#[inline(always)]
pub const fn vip_filter_bit(first_word: u32, last_word: u32) -> u32 {
    let h = (first_word ^ last_word.rotate_left(16)).wrapping_mul(0x9e37_79b1);
    h >> (32 - crate::maps::VIP_FILTER_BITS_LOG2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_slot_stays_in_range() {
        for m in [2u32, 13, 251, 65537, 1_000_003] {
            assert_eq!(ring_slot(0, m), 0);
            assert_eq!(ring_slot(u32::MAX, m), m - 1);
            assert!(ring_slot(0x8000_0000, m) < m);
        }
    }

    #[test]
    fn hashes_spread_over_ring() {
        // 65537 slots, 200k sequential source ports: every 1/16th of the ring
        // gets within 5% of its share.
        let m = 65537u32;
        let mut buckets = [0u32; 16];
        for port in 0..200_000u32 {
            let h = flow_hash_v4(0x0a00_0001, 0x0a00_0002, port, 6).ring();
            buckets[(ring_slot(h, m) * 16 / m) as usize] += 1;
        }
        for b in buckets {
            assert!((11_875..=13_125).contains(&b), "bucket {b}");
        }
    }

    #[test]
    fn v6_hash_uses_every_word() {
        let base = flow_hash_v6(&[1, 2, 3, 4], &[5, 6, 7, 8], 9, 6);
        assert_ne!(base.tag(), 0);
        assert_ne!(base, flow_hash_v6(&[1, 2, 3, 5], &[5, 6, 7, 8], 9, 6));
        assert_ne!(base, flow_hash_v6(&[1, 2, 3, 4], &[5, 6, 7, 9], 9, 6));
        assert_ne!(base, flow_hash_v6(&[1, 2, 3, 4], &[5, 6, 7, 8], 9, 17));
        assert_ne!(client_hash(&[1, 0, 0, 0]), client_hash(&[2, 0, 0, 0]));
    }
}
