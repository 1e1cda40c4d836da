//! `bench`: fixtures for `cargo xtask bench dataplane`. Never attached to a NIC.
//!
//! - `bench_pass`: a bare `XDP_PASS`, the floor of `BPF_PROG_TEST_RUN`;
//! - `bench_macswap`: swaps the MAC addresses and returns `XDP_TX`, the
//!   baseline every path is reported against;
//! - `bench_wrapper`: restores the input packet (see [`BenchConfig`]) and
//!   tail-calls `BENCH_JMP[0]`, the program under test;
//! - `bench_lru_shared` / `bench_lru_percpu` / `bench_table`: one
//!   connection-table miss and insert into a kernel LRU hash with a common LRU
//!   list, one with per-CPU lists (`BPF_F_NO_COMMON_LRU`), and our
//!   set-associative table: the measurement behind the connection table's design.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, xdp_action},
    helpers::generated::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use balancer_common::{
    FAMILY_V4, FlowBucket, FlowKey,
    bench::{BENCH_HEAD_LEN, BenchConfig},
    flow_entry,
    hash::flow_hash_v4,
};
use balancer_ebpf::{
    flowtable::{self, Found},
    packet::{
        adjust_head, adjust_tail, len, load16, load32, ptr_at_mut, store16, store32, write_at,
    },
};

#[map]
static BENCH_JMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_CFG: Array<BenchConfig> = Array::with_max_entries(1, 0);

#[map]
static BENCH_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static LRU_SHARED: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(1 << 20, 0);

#[map]
static LRU_PERCPU: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(1 << 20, BPF_F_NO_COMMON_LRU);

/// Same capacity class as the LRUs: 2^18 sets of 6 entries.
#[map]
static TABLE: Array<FlowBucket> = Array::with_max_entries(1 << 18, 0);

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps source and destination MAC with two 32-bit and two 16-bit loads and
/// stores each way: as tight as the classic C `swap_src_dst_mac`, so it is an
/// honest baseline.
#[xdp]
pub fn bench_macswap(ctx: XdpContext) -> u32 {
    let Some(p) = ptr_at_mut::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let p = p as *mut u8;
    // SAFETY: ptr_at_mut checked that 12 bytes at p are inside the packet.
    unsafe {
        let d0 = load32(p);
        let d1 = load16(p.add(4));
        let s0 = load32(p.add(6));
        let s1 = load16(p.add(10));
        store32(p, s0);
        store16(p.add(4), s1);
        store32(p.add(6), d0);
        store16(p.add(10), d1);
    }
    xdp_action::XDP_TX
}

/// Next value of this CPU's counter.
#[inline(always)]
fn next_counter() -> u32 {
    match BENCH_COUNTER.get_ptr_mut(0) {
        Some(c) => {
            // SAFETY: per-CPU value, this CPU only.
            let c = unsafe { &mut *c };
            *c = c.wrapping_add(1);
            *c
        }
        None => 0,
    }
}

#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    let Some(cfg) = BENCH_CFG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // Undo whatever the previous repeat did to the length: at the head (an
    // encapsulation grew it, a decapsulation cut it), called even when the
    // delta is 0 so the calibration run pays for the helper too; or, for a
    // program that cuts the tail (a RST reply), at the tail. Either way, one
    // helper call.
    let delta = len(&ctx) as i32 - cfg.orig_len as i32;
    if cfg.tail != 0 {
        if adjust_tail(&ctx, -delta).is_none() {
            return xdp_action::XDP_ABORTED;
        }
    } else if adjust_head(&ctx, delta).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    if write_at::<[u8; BENCH_HEAD_LEN]>(&ctx, 0, cfg.head).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    if cfg.rotate != 0 {
        let c = next_counter();
        let sport = ((c & 0xffff) as u16).to_be();
        let src_lo = ((c >> 16) as u16).to_be();
        if write_at(&ctx, (cfg.sport_off & 0xff) as usize, sport).is_none()
            || write_at(&ctx, (cfg.src_lo_off & 0xff) as usize, src_lo).is_none()
        {
            return xdp_action::XDP_ABORTED;
        }
    }
    // SAFETY: tail call into a program of our own; on failure we fall through.
    unsafe { BENCH_JMP.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// A new connection's key: the counter makes every call a miss.
#[inline(always)]
fn new_key() -> FlowKey {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let c = next_counter();
    FlowKey {
        src: [c, cpu, 0, 0],
        dst: [0x0100_000a, 0, 0, 0],
        ports: 0x5000_3930,
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn lru_insert(map: &LruHashMap<FlowKey, u64>) -> u32 {
    let key = new_key();
    // SAFETY: existence check only.
    if unsafe { map.get(key) }.is_none() {
        let _ = map.insert(key, 1, 0);
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_lru_shared(_ctx: XdpContext) -> u32 {
    lru_insert(&LRU_SHARED)
}

#[xdp]
pub fn bench_lru_percpu(_ctx: XdpContext) -> u32 {
    lru_insert(&LRU_PERCPU)
}

#[xdp]
pub fn bench_table(_ctx: XdpContext) -> u32 {
    let key = new_key();
    let h = flow_hash_v4(key.src[0], key.dst[0], key.ports ^ key.src[1], key.proto);
    if let Some(set) = TABLE.get_ptr_mut(h.ring() & ((1 << 18) - 1)) {
        // SAFETY: pointer from a successful lookup of our own array.
        let set = unsafe { &mut *set };
        let now = flowtable::now();
        if let Found::Miss { victim } = flowtable::lookup(set, h.tag(), now) {
            flowtable::store(set, victim, flow_entry(h.tag(), 1, 1), now);
        }
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
