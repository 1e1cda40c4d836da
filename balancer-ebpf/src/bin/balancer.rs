//! `balancer`: the gateway's XDP load balancer.
//!
//! For each packet:
//! 1. parse Ethernet, one 802.1Q tag, IPv4 (with options) or IPv6 (walking up to
//!    three hop-by-hop / routing / destination-options headers), and TCP or UDP
//!    ports;
//! 2. a one-bit prefilter on the destination address rejects non-VIP traffic
//!    after a single array read: it passes untouched;
//! 3. look up the VIP by (address, port, protocol), then (address, 0, protocol);
//! 4. look up the 5-tuple in the connection table; on a miss (or when the entry
//!    names a removed backend) place the connection through the VIP's live Maglev
//!    ring, or for affinity VIPs through the client-affinity table, and record it;
//! 5. encapsulate (IPIP, IP6IP6, 4in6, 6in4) or rewrite MACs only (L2 DSR) and
//!    `XDP_TX`; or answer ICMP "fragmentation needed" / "packet too big" when the
//!    tunnelled packet would not fit the MTU.
//!
//! Fragments: IPv4 fragments and IPv6 packets with a fragment header that are
//! addressed to a VIP are dropped (counted as `drop_fragment`): without
//! reassembly the non-first fragments carry no ports, so they cannot follow
//! their first fragment to the same backend. Everything else passes untouched.
//! IPv6 atomic fragments (offset 0, no M flag) are whole packets and are
//! balanced normally.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::generated::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use balancer_common::{
    AffinityKey, AffinityValue, BACKEND_F_ACTIVE, Backend, Counter, DEFAULT_FLOW_SETS,
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE,
    DataplaneConfig, FAMILY_V4, FAMILY_V6, FlowBucket, ForwardMode, GlobalStats, RING_EMPTY,
    TrafficStats, VIP_F_AFFINITY, VipFilter, VipKey, VipMeta, flow_entry, flow_entry_backend,
    flow_entry_epoch,
    hash::{FlowHash, client_hash, flow_hash_v4, flow_hash_v6, ring_slot, vip_filter_bit},
    ring_base,
};
use balancer_ebpf::{
    csum,
    flowtable::{self, Found},
    net::*,
    packet::{MAX_HDR_OFFSET, adjust_head, adjust_tail, len, read_at, write_at},
};

/// Maglev ring size M, set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;

/// Number of connection-table sets minus one (a power of two minus one), set
/// by the loader.
#[unsafe(no_mangle)]
static FLOW_SET_MASK: u32 = DEFAULT_FLOW_SETS - 1;

#[map]
static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
static VIP_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Flat double-buffered rings, two `u32` slots per element; sized
/// `max_vips * RING_SIZE` elements at load time. Mmapable so the control plane
/// writes a whole ring with one memcpy.
#[map]
static RINGS: Array<u64> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Connection table: one shared set-associative table, sized at load time (see
/// `balancer_ebpf::flowtable` and docs/architecture.md for why not an LRU map).
#[map]
static FLOWS: Array<FlowBucket> = Array::with_max_entries(DEFAULT_FLOW_SETS, BPF_F_MMAPABLE);

#[map]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_AFFINITY, 0);

#[map]
static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
static VIP_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a per-CPU value is only touched by this CPU, and XDP programs do
    // not nest on one CPU.
    let stats = unsafe { &mut *stats };
    process(&ctx, stats)
}

#[inline(always)]
fn bump(stats: &mut GlobalStats, c: Counter) {
    if let Some(v) = stats.counters.get_mut(c as usize) {
        *v += 1;
    }
}

#[inline(always)]
fn pass(stats: &mut GlobalStats, c: Counter) -> u32 {
    bump(stats, c);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(stats: &mut GlobalStats, c: Counter) -> u32 {
    bump(stats, c);
    xdp_action::XDP_DROP
}

/// What the parser learned about a packet addressed to a VIP.
struct Packet {
    /// Offset of the L3 header (14, or 18 behind a VLAN tag).
    l3: usize,
    /// Client address words.
    src: [u32; 4],
    /// VIP address words.
    dst: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    family: u8,
    /// L3 length (IPv4 total length / IPv6 payload + 40).
    l3_len: u32,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    tos: u8,
    /// IPv4 DF flag (always true for IPv6, which routers never fragment).
    df: bool,
    /// TCP segment without SYN.
    tcp_non_syn: bool,
    /// IPv4 header length, for building ICMP errors.
    ihl: usize,
}

#[inline(always)]
fn process(ctx: &XdpContext, stats: &mut GlobalStats) -> u32 {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return pass(stats, Counter::PassMalformed);
    };
    let mut proto = eth.proto;
    let mut l3 = ETH_HLEN;
    if proto == be16(ETH_P_8021Q) || proto == be16(ETH_P_8021AD) {
        let Some(vlan) = read_at::<VlanHdr>(ctx, ETH_HLEN) else {
            return pass(stats, Counter::PassMalformed);
        };
        proto = vlan.proto;
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    if proto == be16(ETH_P_IP) {
        process_v4(ctx, stats, l3)
    } else if proto == be16(ETH_P_IPV6) {
        process_v6(ctx, stats, l3)
    } else {
        pass(stats, Counter::PassNonIp)
    }
}

/// Whether the prefilter bit of an address is set.
#[inline(always)]
fn maybe_vip(first: u32, last: u32) -> bool {
    let bit = vip_filter_bit(first, last);
    let Some(filter) = VIP_FILTER.get(0) else {
        return false;
    };
    match filter.words.get((bit >> 6) as usize) {
        Some(w) => w & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// Looks up the VIP for (address, port, protocol), falling back to the
/// all-ports VIP of the address.
#[inline(always)]
fn lookup_vip(addr: [u32; 4], port: u16, proto: u8, family: u8) -> Option<VipMeta> {
    let mut key = VipKey {
        addr,
        port,
        proto,
        family,
    };
    // SAFETY: hash-map values are copied out at once.
    if let Some(v) = unsafe { VIPS.get(key) } {
        return Some(*v);
    }
    if port == 0 {
        return None;
    }
    key.port = 0;
    unsafe { VIPS.get(key) }.copied()
}

#[inline(always)]
fn process_v4(ctx: &XdpContext, stats: &mut GlobalStats, l3: usize) -> u32 {
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, l3) else {
        return pass(stats, Counter::PassMalformed);
    };
    if ip.version_ihl >> 4 != 4 {
        return pass(stats, Counter::PassMalformed);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return pass(stats, Counter::PassMalformed);
    }
    if !maybe_vip(ip.dst, ip.dst) {
        return pass(stats, Counter::PassNotVip);
    }
    // The header must not claim more than the frame holds (Ethernet padding
    // may make the frame longer, never shorter).
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if tot_len < ihl || l3 + tot_len > len(ctx) {
        return pass(stats, Counter::PassMalformed);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return pass(stats, Counter::PassNonL4);
    }
    let dst = [ip.dst, 0, 0, 0];
    let frag = u16::from_be(ip.frag_off);
    if frag & IP_OFFSET != 0 {
        // A later fragment: no ports. Only an all-ports VIP can claim it.
        return match lookup_vip(dst, 0, ip.proto, FAMILY_V4) {
            Some(_) => drop(stats, Counter::DropFragment),
            None => pass(stats, Counter::PassFragment),
        };
    }
    let l4 = l3 + ihl;
    let Some(ports) = read_at::<u32>(ctx, l4) else {
        return pass(stats, Counter::PassMalformed);
    };
    let dport = (ports >> 16) as u16; // the second pair of bytes on the wire
    let Some(vip) = lookup_vip(dst, dport, ip.proto, FAMILY_V4) else {
        return pass(stats, Counter::PassNotVip);
    };
    if frag & IP_MF != 0 {
        return drop(stats, Counter::DropFragment);
    }
    let tcp_non_syn = if ip.proto == IPPROTO_TCP {
        match read_at::<u8>(ctx, l4 + 13) {
            Some(flags) => flags & TCP_SYN == 0,
            None => return pass(stats, Counter::PassMalformed),
        }
    } else {
        false
    };
    let pkt = Packet {
        l3,
        src: [ip.src, 0, 0, 0],
        dst,
        family: FAMILY_V4,
        l3_len: tot_len as u32,
        tos: ip.tos,
        df: frag & IP_DF != 0,
        tcp_non_syn,
        ihl,
    };
    let hash = flow_hash_v4(ip.src, ip.dst, ports, ip.proto);
    balance(ctx, stats, &vip, &pkt, hash)
}

#[inline(always)]
fn process_v6(ctx: &XdpContext, stats: &mut GlobalStats, l3: usize) -> u32 {
    let Some(ip) = read_at::<Ipv6Hdr>(ctx, l3) else {
        return pass(stats, Counter::PassMalformed);
    };
    if u32::from_be(ip.ver_tc_flow) >> 28 != 6 {
        return pass(stats, Counter::PassMalformed);
    }
    if !maybe_vip(ip.dst[0], ip.dst[3]) {
        return pass(stats, Counter::PassNotVip);
    }
    if l3 + IPV6_HLEN + u16::from_be(ip.payload_len) as usize > len(ctx) {
        return pass(stats, Counter::PassMalformed);
    }
    let mut nexthdr = ip.nexthdr;
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut later_fragment = false;
    // Walk at most three extension headers; real traffic to a VIP carries none.
    for _ in 0..3 {
        match nexthdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = read_at::<Ipv6ExtHdr>(ctx, off) else {
                    return pass(stats, Counter::PassMalformed);
                };
                nexthdr = ext.nexthdr;
                off = (off + (ext.len as usize + 1) * 8) & MAX_HDR_OFFSET;
            }
            IPPROTO_FRAGMENT => {
                let Some(fh) = read_at::<Ipv6FragHdr>(ctx, off) else {
                    return pass(stats, Counter::PassMalformed);
                };
                nexthdr = fh.nexthdr;
                off = (off + 8) & MAX_HDR_OFFSET;
                let fo = u16::from_be(fh.frag_off);
                // Offset 0 without M is an atomic fragment: a whole packet.
                if fo & 0xfff9 != 0 {
                    fragment = true;
                    later_fragment = fo & 0xfff8 != 0;
                }
            }
            _ => break,
        }
    }
    if nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP {
        return match nexthdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | 50 | 51 => {
                pass(stats, Counter::PassIpv6Ext)
            }
            _ => pass(stats, Counter::PassNonL4),
        };
    }
    if later_fragment {
        return match lookup_vip(ip.dst, 0, nexthdr, FAMILY_V6) {
            Some(_) => drop(stats, Counter::DropFragment),
            None => pass(stats, Counter::PassFragment),
        };
    }
    let Some(ports) = read_at::<u32>(ctx, off) else {
        return pass(stats, Counter::PassMalformed);
    };
    let dport = (ports >> 16) as u16;
    let Some(vip) = lookup_vip(ip.dst, dport, nexthdr, FAMILY_V6) else {
        return pass(
            stats,
            if fragment {
                Counter::PassFragment
            } else {
                Counter::PassNotVip
            },
        );
    };
    if fragment {
        return drop(stats, Counter::DropFragment);
    }
    let tcp_non_syn = if nexthdr == IPPROTO_TCP {
        match read_at::<u8>(ctx, off + 13) {
            Some(flags) => flags & TCP_SYN == 0,
            None => return pass(stats, Counter::PassMalformed),
        }
    } else {
        false
    };
    let vtf = u32::from_be(ip.ver_tc_flow);
    let pkt = Packet {
        l3,
        src: ip.src,
        dst: ip.dst,
        family: FAMILY_V6,
        l3_len: u16::from_be(ip.payload_len) as u32 + IPV6_HLEN as u32,
        tos: (vtf >> 20) as u8,
        df: true,
        tcp_non_syn,
        ihl: IPV6_HLEN,
    };
    let hash = flow_hash_v6(&ip.src, &ip.dst, ports, nexthdr);
    balance(ctx, stats, &vip, &pkt, hash)
}

/// Picks the backend on the VIP's live ring for `hash`.
#[inline(always)]
fn ring_pick(vip: &VipMeta, hash: u32) -> Result<(u32, Backend), Counter> {
    // SAFETY: a plain read of a constant the loader froze.
    let m = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    let Some(base) = ring_base(vip.index, vip.ring_gen & 1, m) else {
        return Err(Counter::DropInternal);
    };
    let slot = base.wrapping_add(ring_slot(hash, m));
    let Some(&pair) = RINGS.get(slot >> 1) else {
        return Err(Counter::DropInternal);
    };
    let idx = (pair >> ((slot & 1) * 32)) as u32;
    if idx == RING_EMPTY {
        return Err(Counter::DropNoBackend);
    }
    match BACKENDS.get(idx) {
        Some(b) if b.flags & BACKEND_F_ACTIVE != 0 => Ok((idx, *b)),
        _ => Err(Counter::DropInternal),
    }
}

/// A backend from a table entry, if its slot still holds the same backend
/// (compared on the low 16 epoch bits the connection table keeps).
#[inline(always)]
fn live_backend(idx: u32, epoch: u32) -> Option<Backend> {
    match BACKENDS.get(idx) {
        Some(b) if b.flags & BACKEND_F_ACTIVE != 0 && (b.epoch ^ epoch) & 0xffff == 0 => Some(*b),
        _ => None,
    }
}

/// Places a new connection of an affinity VIP: the client's remembered backend
/// while its entry lives, else the ring by client hash.
#[inline(always)]
fn affinity_pick(
    stats: &mut GlobalStats,
    vip: &VipMeta,
    client: [u32; 4],
) -> Result<(u32, Backend), Counter> {
    let key = AffinityKey {
        addr: client,
        vip_index: vip.index,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let ttl = vip.affinity_timeout_secs as u64 * NS_PER_SEC;
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup; a racing writer can
        // at worst make us use a value as old as the one we replace.
        let entry = unsafe { &mut *entry };
        if entry.expires_ns > now
            && let Some(b) = live_backend(entry.backend, entry.epoch)
        {
            entry.expires_ns = now + ttl;
            bump(stats, Counter::AffinityHit);
            return Ok((entry.backend, b));
        }
    }
    bump(stats, Counter::AffinityMiss);
    let (idx, b) = ring_pick(vip, client_hash(&client))?;
    let value = AffinityValue {
        backend: idx,
        epoch: b.epoch,
        expires_ns: now + ttl,
    };
    let _ = AFFINITY.insert(key, value, 0);
    Ok((idx, b))
}

#[inline(always)]
fn balance(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    vip: &VipMeta,
    pkt: &Packet,
    hash: FlowHash,
) -> u32 {
    // SAFETY: a plain read of a constant the loader froze.
    let mask = unsafe { core::ptr::read_volatile(&FLOW_SET_MASK) };
    let Some(set) = FLOWS.get_ptr_mut(hash.ring() & mask) else {
        return drop(stats, Counter::DropInternal);
    };
    // SAFETY: the pointer comes from a successful lookup of our own array; see
    // balancer_ebpf::flowtable for how concurrent writers are tolerated.
    let set = unsafe { &mut *set };
    let now = flowtable::now();
    let tag = hash.tag();
    let mut new_flow = false;
    let mut chosen: Option<(u32, Backend)> = None;
    let way = match flowtable::lookup(set, tag, now) {
        Found::Hit { way, entry } => {
            let idx = flow_entry_backend(entry);
            match live_backend(idx, flow_entry_epoch(entry)) {
                Some(b) => {
                    bump(stats, Counter::LruHit);
                    chosen = Some((idx, b));
                }
                None => bump(stats, Counter::LruStale),
            }
            way
        }
        Found::Miss { victim } => {
            bump(stats, Counter::LruMiss);
            if pkt.tcp_non_syn {
                bump(stats, Counter::LruMissTcpNonSyn);
            }
            victim
        }
    };
    let (idx, backend) = match chosen {
        Some(c) => c,
        None => {
            let picked = if vip.flags & VIP_F_AFFINITY != 0 {
                affinity_pick(stats, vip, pkt.src)
            } else {
                ring_pick(vip, hash.ring())
            };
            let (idx, b) = match picked {
                Ok(p) => p,
                Err(c) => return drop(stats, c),
            };
            flowtable::store(set, way, flow_entry(tag, idx, b.epoch), now);
            new_flow = true;
            (idx, b)
        }
    };

    let action = match ForwardMode::from_u8(vip.mode) {
        Some(ForwardMode::L2Dsr) => l2_dsr(ctx, stats, &backend),
        Some(ForwardMode::Tunnel) => tunnel(ctx, stats, pkt, &backend, hash.ring()),
        None => drop(stats, Counter::DropInternal),
    };
    if action == xdp_action::XDP_TX {
        account(vip.index, idx, pkt.l3_len as u64, new_flow);
    }
    action
}

#[inline(always)]
fn account(vip_index: u32, backend: u32, bytes: u64, new_flow: bool) {
    let nf = new_flow as u64;
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_index) {
        // SAFETY: per-CPU value, this CPU only.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += nf;
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as above.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += nf;
    }
}

/// L2 DSR: new destination MAC, our MAC as source.
#[inline(always)]
fn l2_dsr(ctx: &XdpContext, stats: &mut GlobalStats, backend: &Backend) -> u32 {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return drop(stats, Counter::DropInternal);
    };
    let new = EthHdr {
        dst: mac_from_bytes(backend.next_hop_mac),
        src: eth.dst,
        proto: eth.proto,
    };
    if write_at(ctx, 0, new).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::TxL2Dsr);
    xdp_action::XDP_TX
}

/// Encapsulates towards the backend, or answers "too big".
#[inline(always)]
fn tunnel(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    pkt: &Packet,
    backend: &Backend,
    hash: u32,
) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return drop(stats, Counter::DropInternal);
    };
    let outer_v6 = backend.family == FAMILY_V6;
    let overhead = if outer_v6 { IPV6_HLEN } else { IPV4_HLEN } as u32;
    if cfg.mtu != 0 && pkt.l3_len + overhead > cfg.mtu {
        let adv = cfg.mtu - overhead;
        return if pkt.family == FAMILY_V4 {
            if pkt.df {
                icmp4_too_big(ctx, stats, pkt, adv)
            } else {
                drop(stats, Counter::DropTooBigNoDf)
            }
        } else {
            icmp6_too_big(ctx, stats, pkt, adv)
        };
    }

    // Everything we keep from the old headers, read before the head moves.
    let Some((eth, vlan)) = read_l2(ctx, pkt.l3) else {
        return drop(stats, Counter::DropInternal);
    };
    if adjust_head(ctx, -(overhead as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    if write_l2(
        ctx,
        &eth,
        vlan,
        mac_from_bytes(backend.next_hop_mac),
        eth.dst,
        ethertype,
    )
    .is_none()
    {
        return drop(stats, Counter::DropInternal);
    }
    let l3 = pkt.l3;
    if outer_v6 {
        let mut src = cfg.tunnel_src_v6;
        src[3] = (src[3] & !cfg.tunnel_src_v6_hashmask) | (hash & cfg.tunnel_src_v6_hashmask);
        let hdr = Ipv6Hdr {
            ver_tc_flow: be32((6 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff)),
            payload_len: be16(pkt.l3_len as u16),
            nexthdr: inner_proto,
            hop_limit: 64,
            src,
            dst: backend.addr,
        };
        if write_at(ctx, l3, hdr).is_none() {
            return drop(stats, Counter::DropInternal);
        }
        bump(stats, Counter::TxTunnelV6);
    } else {
        let src =
            (cfg.tunnel_src_v4 & !cfg.tunnel_src_v4_hashmask) | (hash & cfg.tunnel_src_v4_hashmask);
        let frag = if pkt.df { be16(IP_DF) } else { 0 };
        let hdr = ipv4_header(
            pkt.tos,
            (pkt.l3_len + IPV4_HLEN as u32) as u16,
            frag,
            inner_proto,
            src,
            backend.addr[0],
        );
        if write_at(ctx, l3, hdr).is_none() {
            return drop(stats, Counter::DropInternal);
        }
        bump(stats, Counter::TxTunnelV4);
    }
    xdp_action::XDP_TX
}

/// Builds an IPv4 header (no options, TTL 64) with its checksum.
#[inline(always)]
fn ipv4_header(tos: u8, tot_len: u16, frag_off_be: u16, proto: u8, src: u32, dst: u32) -> Ipv4Hdr {
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        tot_len: be16(tot_len),
        id: 0,
        frag_off: frag_off_be,
        ttl: 64,
        proto,
        check: 0,
        src,
        dst,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain data, 4-byte aligned.
    let words: &[u32; 5] = unsafe { &*(&hdr as *const Ipv4Hdr as *const [u32; 5]) };
    hdr.check = csum::ipv4_header(words);
    hdr
}

/// Reads the Ethernet header and, when the L3 header starts behind one, the
/// VLAN tag: what must survive a move of the packet head.
#[inline(always)]
fn read_l2(ctx: &XdpContext, l3: usize) -> Option<(EthHdr, Option<VlanHdr>)> {
    let eth = read_at::<EthHdr>(ctx, 0)?;
    let vlan = if l3 > ETH_HLEN {
        Some(read_at::<VlanHdr>(ctx, ETH_HLEN)?)
    } else {
        None
    };
    Some((eth, vlan))
}

/// Writes Ethernet (and the VLAN tag, if the packet had one) at the packet start.
#[inline(always)]
fn write_l2(
    ctx: &XdpContext,
    old: &EthHdr,
    vlan: Option<VlanHdr>,
    dst: Mac,
    src: Mac,
    ethertype: u16,
) -> Option<()> {
    match vlan {
        Some(tag) => {
            write_at(
                ctx,
                0,
                EthHdr {
                    dst,
                    src,
                    proto: old.proto,
                },
            )?;
            write_at(
                ctx,
                ETH_HLEN,
                VlanHdr {
                    tci: tag.tci,
                    proto: be16(ethertype),
                },
            )
        }
        None => write_at(
            ctx,
            0,
            EthHdr {
                dst,
                src,
                proto: be16(ethertype),
            },
        ),
    }
}

/// Most bytes of the offending packet quoted in an ICMP error.
const ICMP4_QUOTE_MAX: usize = 60 + 8;
const ICMP6_QUOTE: usize = 128;

/// Turns the packet into ICMP "fragmentation needed" back to the client and
/// returns `XDP_TX`. The reply quotes the client's IP header and 8 bytes, as
/// RFC 792 asks, and comes from the VIP.
#[inline(always)]
fn icmp4_too_big(ctx: &XdpContext, stats: &mut GlobalStats, pkt: &Packet, mtu: u32) -> u32 {
    let l3 = pkt.l3;
    let Some((eth, vlan)) = read_l2(ctx, l3) else {
        return drop(stats, Counter::DropInternal);
    };
    let quote = (pkt.ihl + 8) & 0x7f;
    let keep = l3 + quote;
    let cur = len(ctx);
    if cur > keep && adjust_tail(ctx, keep as i32 - cur as i32).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if adjust_head(ctx, -((IPV4_HLEN + ICMP_HLEN) as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if write_l2(ctx, &eth, vlan, eth.src, eth.dst, ETH_P_IP).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let ip = ipv4_header(
        0,
        (IPV4_HLEN + ICMP_HLEN + quote) as u16,
        0,
        IPPROTO_ICMP,
        pkt.dst[0],
        pkt.src[0],
    );
    if write_at(ctx, l3, ip).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let mut icmp = IcmpHdr {
        kind: 3,
        code: 4,
        check: 0,
        // Two unused bytes, then the next-hop MTU; as a u32 on the wire.
        data: be32(mtu & 0xffff),
    };
    let icmp_off = l3 + IPV4_HLEN;
    let mut sum = csum::add32(0, u32::from_ne_bytes([icmp.kind, icmp.code, 0, 0]));
    sum = csum::add32(sum, icmp.data);
    sum = sum_packet::<{ ICMP4_QUOTE_MAX / 2 }>(ctx, icmp_off + ICMP_HLEN, sum);
    icmp.check = csum::fold(sum);
    if write_at(ctx, icmp_off, icmp).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::IcmpTooBigV4);
    xdp_action::XDP_TX
}

/// Turns the packet into ICMPv6 "packet too big" back to the client.
#[inline(always)]
fn icmp6_too_big(ctx: &XdpContext, stats: &mut GlobalStats, pkt: &Packet, mtu: u32) -> u32 {
    let l3 = pkt.l3;
    let Some((eth, vlan)) = read_l2(ctx, l3) else {
        return drop(stats, Counter::DropInternal);
    };
    // The packet is larger than the MTU (>= 1280), so it always has this much.
    let keep = l3 + ICMP6_QUOTE;
    let cur = len(ctx);
    if cur < keep {
        return drop(stats, Counter::DropInternal);
    }
    if cur > keep && adjust_tail(ctx, keep as i32 - cur as i32).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if adjust_head(ctx, -((IPV6_HLEN + ICMP_HLEN) as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if write_l2(ctx, &eth, vlan, eth.src, eth.dst, ETH_P_IPV6).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let plen = (ICMP_HLEN + ICMP6_QUOTE) as u32;
    let ip = Ipv6Hdr {
        ver_tc_flow: be32(6 << 28),
        payload_len: be16(plen as u16),
        nexthdr: IPPROTO_ICMPV6,
        hop_limit: 64,
        src: pkt.dst,
        dst: pkt.src,
    };
    if write_at(ctx, l3, ip).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    // IPv6 links carry at least 1280 bytes; never advertise less.
    let mtu = if mtu < 1280 { 1280 } else { mtu };
    let mut icmp = IcmpHdr {
        kind: 2,
        code: 0,
        check: 0,
        data: be32(mtu),
    };
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut sum = 0u64;
    for i in 0..4 {
        sum = csum::add32(sum, ip.src[i]);
        sum = csum::add32(sum, ip.dst[i]);
    }
    sum = csum::add32(sum, be32(plen));
    sum = csum::add32(sum, be32(IPPROTO_ICMPV6 as u32));
    sum = csum::add32(sum, u32::from_ne_bytes([icmp.kind, icmp.code, 0, 0]));
    sum = csum::add32(sum, icmp.data);
    let icmp_off = l3 + IPV6_HLEN;
    sum = sum_packet::<{ ICMP6_QUOTE / 2 }>(ctx, icmp_off + ICMP_HLEN, sum);
    icmp.check = csum::fold(sum);
    if write_at(ctx, icmp_off, icmp).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::IcmpTooBigV6);
    xdp_action::XDP_TX
}

/// Adds the 16-bit words from `off` to the end of the packet (at most `N`).
#[inline(always)]
fn sum_packet<const N: usize>(ctx: &XdpContext, off: usize, mut sum: u64) -> u64 {
    let mut pos = off;
    for _ in 0..N {
        match read_at::<u16>(ctx, pos) {
            Some(w) => sum += w as u64,
            None => break,
        }
        pos += 2;
    }
    sum
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
