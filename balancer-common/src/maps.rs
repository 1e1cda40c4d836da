//! Keys and values of the balancer's BPF maps.
//!
//! | map            | kind                         | key            | value             |
//! |----------------|------------------------------|----------------|-------------------|
//! | `VIPS`         | hash                         | [`VipKey`]     | [`VipMeta`]       |
//! | `VIP_FILTER`   | array, 1 entry               | `u32`          | [`VipFilter`]     |
//! | `RINGS`        | array (mmapable) of `u64`    | slot pair      | two backend indexes |
//! | `BACKENDS`     | array                        | backend index  | [`Backend`]       |
//! | `FLOWS`        | array (mmapable), 6-way sets | set index      | [`FlowBucket`]    |
//! | `AFFINITY`     | LRU hash                     | [`AffinityKey`]| [`AffinityValue`] |
//! | `CONFIG`       | array, 1 entry               | `u32`          | [`DataplaneConfig`] |
//! | `STATS`        | per-CPU array, 1 entry       | `u32`          | [`crate::GlobalStats`] |
//! | `VIP_STATS`    | per-CPU array                | VIP index      | [`TrafficStats`]  |
//! | `BACKEND_STATS`| per-CPU array                | backend index  | [`TrafficStats`]  |
//! | `DECAP_VIPS`   | hash (decap program)         | [`AddrKey`]    | `u32`             |
//!
//! The Maglev rings of all VIPs live in one flat array of `u32` slots: VIP `i`
//! owns two halves (generations 0 and 1) of `ring_size` slots each, starting at
//! slot [`ring_base`]`(i, gen, ring_size)`. Userspace writes the inactive half,
//! then flips [`VipMeta::ring_gen`] with one update of the VIP's `VIPS` entry.
//!
//! The BPF map holds the slots in pairs (`u64` elements): the kernel rounds an
//! array element up to 8 bytes, so `u32` elements would waste half the memory
//! and break the flat layout userspace writes through `mmap`. Slot `s` is the
//! low (`s` even) or high (`s` odd) half of element `s / 2`.

use bytemuck::{Pod, Zeroable};

/// Address family tag for IPv4 in [`VipKey::family`] and friends.
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Default Maglev ring size M: prime, and large enough that weights are honoured
/// to within 1% for up to ~650 backends per VIP (M > 100·N).
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Default number of VIPs the maps are sized for.
pub const DEFAULT_MAX_VIPS: u32 = 64;
/// Default number of backend slots.
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Default number of connection-table sets ([`FLOW_WAYS`] entries each): 3.1M
/// entries in 32 MiB, for up to ~800k concurrent connections at the 25% load
/// that keeps set overflow rare.
pub const DEFAULT_FLOW_SETS: u32 = 1 << 19;
/// Default client-affinity table size.
pub const DEFAULT_MAX_AFFINITY: u32 = 1 << 18;

/// A ring slot holding this value has no backend (the VIP's pool is empty):
/// packets that land on it are dropped and counted.
pub const RING_EMPTY: u32 = u32::MAX;

/// log2 of the number of bits in the [`VipFilter`].
pub const VIP_FILTER_BITS_LOG2: u32 = 12;
/// Number of `u64` words in the [`VipFilter`].
pub const VIP_FILTER_WORDS: usize = (1 << VIP_FILTER_BITS_LOG2) / 64;

/// First slot of VIP `vip_index`'s ring of generation `gen` in the flat `RINGS`
/// array. `None` if the index would not fit a `u32` (the loader refuses such
/// sizes up front; see `rings_len`).
#[inline(always)]
pub const fn ring_base(vip_index: u32, generation: u8, ring_size: u32) -> Option<u32> {
    let half = vip_index as u64 * 2 + generation as u64;
    let base = half * ring_size as u64;
    if base > u32::MAX as u64 {
        None
    } else {
        Some(base as u32)
    }
}

/// Number of `u32` slots the rings of `max_vips` double-buffered VIPs of
/// `ring_size` slots need, or `None` if that exceeds a `u32` index.
pub const fn rings_len(max_vips: u32, ring_size: u32) -> Option<u32> {
    let len = max_vips as u64 * 2 * ring_size as u64;
    if len == 0 || len > u32::MAX as u64 {
        None
    } else {
        Some(len as u32)
    }
}

/// Number of `u64` elements of the `RINGS` map for `rings_len` slots (always
/// `max_vips * ring_size`, since the slot count is even).
pub const fn rings_entries(rings_len: u32) -> u32 {
    rings_len / 2 + rings_len % 2
}

/// Key of the `VIPS` map: destination address, port and protocol.
/// A `port` of 0 is an all-ports VIP, looked up when no port-specific VIP matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipKey {
    /// Address words as on the wire; IPv4 uses `addr[0]` and leaves the rest 0.
    pub addr: [u32; 4],
    /// Destination port, network byte order; 0 means all ports.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// VIP flag: client affinity. New connections are placed by the client address
/// alone and remembered in `AFFINITY` for the VIP's timeout.
pub const VIP_F_AFFINITY: u16 = 1 << 0;

/// VIP flag: a refused new TCP connection (see [`VipMeta::shed_share`]) is
/// answered with a RST from XDP, so the client learns at once, instead of
/// its SYN being dropped (the client then retries on its SYN timer). UDP
/// is always dropped.
pub const VIP_F_SHED_RST: u16 = 1 << 1;

/// Forwarding mode of a VIP.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// Encapsulate in IPIP / IP6IP6 (or 4in6 / 6in4, by the backend's family)
    /// and transmit to the backend's next hop. Backends reply directly (DSR).
    Tunnel = 0,
    /// Layer-2 direct server return: rewrite only the MAC addresses. Backends
    /// must share the gateway's L2 segment and hold the VIP on a local device.
    L2Dsr = 1,
}

impl ForwardMode {
    /// Decodes the wire value stored in [`VipMeta::mode`].
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Tunnel),
            1 => Some(Self::L2Dsr),
            _ => None,
        }
    }
}

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipMeta {
    /// Dense index of the VIP: its rings, stats and affinity entries use it.
    pub index: u32,
    /// `VIP_F_*` flags.
    pub flags: u16,
    /// A [`ForwardMode`] as `u8`.
    pub mode: u8,
    /// Which half of the VIP's double-buffered ring is live (0 or 1).
    pub ring_gen: u8,
    /// Lifetime of a client-affinity entry, in seconds.
    pub affinity_timeout_secs: u32,
    /// Share of new connections refused (dropped before placement), in
    /// 65536ths: the VIP's tier shed by the control plane while its pool
    /// is saturated. Established connections are never refused.
    pub shed_share: u16,
    /// Zero.
    pub _pad: [u8; 2],
}

/// [`VipMeta::shed_share`] that refuses every new connection.
pub const SHED_ALL: u16 = u16::MAX;

/// Whether a new connection whose flow hashes to `hash`, at `now_ns`, is
/// refused under `share`. The draw mixes the clock (at about a millisecond)
/// into the flow hash, so a client's retransmitted SYN is drawn again.
#[inline(always)]
pub fn shed_draw(share: u16, hash: u32, now_ns: u64) -> bool {
    if share == 0 {
        return false;
    }
    if share == SHED_ALL {
        return true;
    }
    let mut z = (hash as u64) ^ (now_ns >> 20).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 27;
    ((z >> 48) as u16) < share
}

/// One slot of the VIP table (`VIPS`), an array the control plane lays out as
/// an open-addressing hash table with linear probing.
///
/// Why not a kernel hash map: its lookup (jhash over the key, a bucket walk, a
/// helper call) cost about 30 ns on the established path, a third of the
/// whole packet. Here a VIP is found by our own cheap hash, one inlined array
/// access and a five-word compare, usually in the first slot.
///
/// Readers never see a VIP half-inserted as a different VIP: a slot changes
/// from empty or removed to a VIP, from a VIP to removed, or only in its
/// `meta` (the ring flip writes one byte), and the `family` byte decides
/// emptiness.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipSlot {
    /// The VIP; `key.family` is [`VIP_SLOT_EMPTY`] or [`VIP_SLOT_REMOVED`] in a
    /// slot that holds none.
    pub key: VipKey,
    /// Its metadata.
    pub meta: VipMeta,
}

/// `VipSlot::key.family` of a slot never used: a probe stops there.
pub const VIP_SLOT_EMPTY: u8 = 0;
/// `VipSlot::key.family` of a slot whose VIP was removed: a probe goes on past
/// it, and an insert may reuse it.
pub const VIP_SLOT_REMOVED: u8 = 0xff;
/// Most slots a VIP may lie from its home slot; lookups probe at most this many.
pub const VIP_PROBES: u32 = 8;

/// Number of `VIPS` slots for `max_vips` VIPs: a power of two with at most a
/// quarter of it in use, so probes are short and a placement within
/// [`VIP_PROBES`] of home is all but certain.
pub const fn vip_table_slots(max_vips: u32) -> u32 {
    let want = if max_vips < 2 { 8 } else { max_vips * 4 };
    want.next_power_of_two()
}

/// A small Bloom filter (one hash) over all VIP addresses. Packets whose
/// destination bit is clear cannot be for a VIP and pass after one array read,
/// which keeps the non-VIP path close to a bare XDP_PASS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipFilter {
    /// The bit set, indexed by [`crate::hash::vip_filter_bit`].
    pub words: [u64; VIP_FILTER_WORDS],
}

impl Default for VipFilter {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl VipFilter {
    /// Sets the bit of an address (words as on the wire).
    pub fn insert(&mut self, addr: &[u32; 4], family: u8) {
        let bit = Self::bit(addr, family);
        self.words[(bit / 64) as usize] |= 1u64 << (bit % 64);
    }

    /// Whether the bit of an address is set.
    pub fn contains(&self, addr: &[u32; 4], family: u8) -> bool {
        let bit = Self::bit(addr, family);
        self.words[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0
    }

    fn bit(addr: &[u32; 4], family: u8) -> u32 {
        let last = if family == FAMILY_V4 {
            addr[0]
        } else {
            addr[3]
        };
        crate::hash::vip_filter_bit(addr[0], last)
    }
}

/// Backend flag: the slot holds a live backend. A cleared flag means removed:
/// flows pinned to it are rescheduled through the ring.
pub const BACKEND_F_ACTIVE: u8 = 1 << 0;

/// Value of the `BACKENDS` array, indexed by backend index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Backend {
    /// Tunnel destination, words as on the wire (IPv4 in `addr[0]`).
    pub addr: [u32; 4],
    /// MAC of the next hop towards the backend (the backend itself on-link, or
    /// the router).
    pub next_hop_mac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`]: picks the outer header.
    pub family: u8,
    /// `BACKEND_F_*` flags.
    pub flags: u8,
    /// Bumped each time the slot is given to a new backend, so connection-table
    /// entries that point at an earlier occupant are recognised as stale.
    pub epoch: u32,
}

/// A connection's 5-tuple in map-key layout (used by the LRU comparison in the
/// benchmark fixtures).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// Source address words as on the wire.
    pub src: [u32; 4],
    /// Destination (VIP) address words as on the wire.
    pub dst: [u32; 4],
    /// Source port then destination port, as the 4 bytes read from the packet.
    pub ports: u32,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

/// Entries per connection-table set: six 8-byte entries and six 2-byte stamps
/// fill one 64-byte cache line.
pub const FLOW_WAYS: usize = 6;

/// One set of the connection table (`FLOWS`), exactly one cache line.
///
/// The table is a set-associative cache with least-recently-used replacement
/// inside each set: the set is chosen by the connection's placement hash, the
/// entry by its 32-bit tag. Each entry is one `u64` ([`flow_entry`]), so it
/// is written and read whole: a concurrent reader never sees half an entry.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowBucket {
    /// Entries: tag (32 bits), backend slot (16), backend epoch (16); 0 = empty.
    pub entries: [u64; FLOW_WAYS],
    /// Last-use stamps (`jiffies >> 4`, wrapping), for LRU replacement.
    pub stamps: [u16; FLOW_WAYS],
    /// Zero.
    pub _pad: u32,
}

/// Packs a connection-table entry.
#[inline(always)]
pub const fn flow_entry(tag: u32, backend: u32, epoch: u32) -> u64 {
    ((tag | 1) as u64) << 32 | ((backend & 0xffff) as u64) << 16 | (epoch & 0xffff) as u64
}

/// The tag of an entry.
#[inline(always)]
pub const fn flow_entry_tag(e: u64) -> u32 {
    (e >> 32) as u32
}

/// The backend slot of an entry.
#[inline(always)]
pub const fn flow_entry_backend(e: u64) -> u32 {
    ((e >> 16) & 0xffff) as u32
}

/// The low 16 bits of the backend epoch of an entry.
#[inline(always)]
pub const fn flow_entry_epoch(e: u64) -> u32 {
    (e & 0xffff) as u32
}

/// Key of the `AFFINITY` table: a client of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    /// Client address words as on the wire.
    pub addr: [u32; 4],
    /// The VIP's index.
    pub vip_index: u32,
}

/// Value of the `AFFINITY` table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityValue {
    /// Backend index the client is pinned to.
    pub backend: u32,
    /// The backend slot's epoch when the entry was made.
    pub epoch: u32,
    /// `bpf_ktime_get_ns()` after which the entry no longer counts.
    pub expires_ns: u64,
}

/// Key of the decap program's `DECAP_VIPS` map: an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AddrKey {
    /// Address words as on the wire.
    pub addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`], widened to keep the key free of padding.
    pub family: u32,
}

/// Most tunnel source prefixes the decap program accepts (`DECAP_SOURCES`).
pub const DECAP_MAX_SOURCES: u32 = 8;

/// An element of `DECAP_SOURCES`: outer sources the decap program accepts
/// tunnelled packets from. `family` 0 ends the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourcePrefix {
    /// Prefix address words as on the wire, host bits zero.
    pub addr: [u32; 4],
    /// Mask words as on the wire.
    pub mask: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`], widened; 0 for an unused element.
    pub family: u32,
}

impl SourcePrefix {
    /// Whether an address of `family` (words as on the wire) lies inside.
    #[inline(always)]
    pub fn contains(&self, family: u32, addr: &[u32; 4]) -> bool {
        self.family == family
            && addr[0] & self.mask[0] == self.addr[0]
            && addr[1] & self.mask[1] == self.addr[1]
            && addr[2] & self.mask[2] == self.addr[2]
            && addr[3] & self.mask[3] == self.addr[3]
    }
}

/// Runtime settings of the data path (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// Base of the outer IPv4 source addresses (network order).
    pub tunnel_src_v4: u32,
    /// Bits of the IPv4 outer source taken from the flow hash (network order),
    /// so backends spread tunnelled flows over their receive queues.
    pub tunnel_src_v4_hashmask: u32,
    /// Base of the outer IPv6 source addresses (words as on the wire).
    pub tunnel_src_v6: [u32; 4],
    /// Bits of the last word of the IPv6 outer source taken from the flow hash.
    pub tunnel_src_v6_hashmask: u32,
    /// L3 MTU towards the backends. An encapsulated packet larger than this gets
    /// ICMP "fragmentation needed" (IPv4 with DF) or "packet too big" (IPv6).
    /// 0 disables the check.
    pub mtu: u32,
}

/// Per-CPU traffic counters of one VIP or one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TrafficStats {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (L3 length before encapsulation).
    pub bytes: u64,
    /// Connections newly placed through the ring.
    pub new_flows: u64,
}

impl TrafficStats {
    /// Adds another set of counters (used to sum per-CPU values).
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], has no padding and is bytemuck::Pod.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::VipFilter {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowBucket {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::SourcePrefix {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
    unsafe impl aya::Pod for super::TrafficStats {}
    unsafe impl aya::Pod for crate::stats::GlobalStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<VipMeta>(), 16);
        assert_eq!(size_of::<Backend>(), 28);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowBucket>(), 64);
        assert_eq!(size_of::<AffinityKey>(), 20);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<VipFilter>(), 512);
        assert_eq!(size_of::<DataplaneConfig>(), 32);
    }

    #[test]
    fn default_rings_fit_a_u32_index() {
        let len = rings_len(DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE).unwrap();
        assert_eq!(len, 64 * 2 * 65_537);
        // 8-byte elements, no padding: 4 bytes per slot, 32 MiB for the defaults.
        assert_eq!(rings_entries(len) as u64 * 8, len as u64 * 4);
        assert_eq!(rings_entries(len) as u64 * 8, 33_554_944);
        // The last slot of the last VIP's second half is the array's last index.
        let last =
            ring_base(DEFAULT_MAX_VIPS - 1, 1, DEFAULT_RING_SIZE).unwrap() + DEFAULT_RING_SIZE - 1;
        assert_eq!(last, len - 1);
        assert!(rings_len(40_000, DEFAULT_RING_SIZE).is_none());
        assert!(rings_len(0, DEFAULT_RING_SIZE).is_none());
    }

    #[test]
    fn flow_entries_roundtrip() {
        let e = flow_entry(0xdead_beee, 0x1_2345, 0x7_0009);
        assert_eq!(flow_entry_tag(e), 0xdead_beef, "tag forced odd, never 0");
        assert_eq!(flow_entry_backend(e), 0x2345);
        assert_eq!(flow_entry_epoch(e), 0x0009);
        assert_ne!(
            flow_entry(0, 0, 0),
            0,
            "a live entry is never the empty marker"
        );
    }

    #[test]
    fn filter_roundtrip() {
        let mut f = VipFilter::default();
        let a = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        assert!(!f.contains(&a, FAMILY_V4));
        f.insert(&a, FAMILY_V4);
        assert!(f.contains(&a, FAMILY_V4));
    }
}
