//! The engine model against hand-worked timelines and queueing theory.

use super::{
    engine::{Engine, Event, Request, SubmitError},
    prefix::chain,
    profile::{Class, Profile, ProfileError},
    sim::replay,
};

/// A small test class (also the priority tests').
pub(super) fn class() -> Class {
    Class {
        name: "t".into(),
        source: "test".into(),
        prefill_tokens_per_s: 10_000.0,
        decode_ms_base: 10.0,
        decode_ms_per_seq: 1.0,
        kv_tokens: 16 * 1024,
        max_seqs: 8,
        block_tokens: 16,
        max_step_tokens: 4096,
        load_s: 0.0,
    }
}

fn req(id: u64, prompt: u32, max: u32) -> Request {
    Request {
        id,
        prompt_tokens: prompt,
        max_tokens: max,
        blocks: chain((0..prompt / 16).map(|b| id * 1000 + b as u64)),
        priority: 0,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn one_request_prefills_then_decodes_one_token_a_step() {
    let mut e = Engine::new(class());
    let out = replay(&mut e, &[(0.0, req(1, 1000, 5))]).unwrap();
    // Prefill 1000 tokens at 10k/s, first token at its end; then four
    // decode steps of 10 ms alone.
    let first = out[0].first.unwrap();
    assert!(close(first, 0.1), "{first}");
    assert!(close(out[0].done, 0.1 + 4.0 * 0.010), "{:?}", out[0]);
    let c = e.counters();
    assert_eq!(
        (c.prompt_tokens, c.generation_tokens, c.finished),
        (1000, 5, 1)
    );
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_decodes() {
    let mut e = Engine::new(class());
    e.submit(req(1, 100, 50)).unwrap();
    let s = e.step().unwrap();
    assert_eq!((s.decoded, s.prefilled), (0, 100));
    assert_eq!(s.events, vec![Event::First(1)]);
    e.submit(req(2, 10_000, 1)).unwrap();
    // One decode token, the rest of the budget (4095) for the new prompt.
    let s = e.step().unwrap();
    assert_eq!((s.decoded, s.prefilled), (1, 4095));
    assert!(close(s.secs, 0.010 + 4095.0 / 10_000.0), "{}", s.secs);
    let s = e.step().unwrap();
    assert_eq!((s.decoded, s.prefilled), (1, 4095));
    let s = e.step().unwrap();
    assert_eq!((s.decoded, s.prefilled), (1, 10_000 - 2 * 4095));
    assert!(s.events.contains(&Event::First(2)) && s.events.contains(&Event::Done(2)));
}

#[test]
fn a_request_joins_the_running_batch() {
    let mut e = Engine::new(class());
    let out = replay(&mut e, &[(0.0, req(1, 100, 200)), (0.5, req(2, 100, 10))]).unwrap();
    // The second starts while the first still decodes, and ends first.
    assert!(out[1].first.unwrap() < out[0].done);
    assert!(out[1].done < out[0].done, "{out:?}");
    // Decode steps with two sequences cost 11 ms, not 10.
    assert!(out[0].done > 0.01 + 199.0 * 0.010 + 9.0 * 0.001, "{out:?}");
}

#[test]
fn cached_prefix_blocks_are_not_computed_again() {
    let mut e = Engine::new(class());
    let shared: Vec<u64> = (0..60).collect();
    let mk = |id, tail: u64| Request {
        id,
        prompt_tokens: 64 * 16,
        max_tokens: 1,
        blocks: chain(shared.iter().copied().chain(tail..tail + 4)),
        priority: 0,
    };
    let out = replay(&mut e, &[(0.0, mk(1, 1000)), (1.0, mk(2, 2000))]).unwrap();
    // 60 of 64 blocks were cached: 4 blocks computed, not 64.
    let ttft = |o: &super::sim::Outcome| o.first.unwrap() - o.arrival;
    assert!(close(ttft(&out[0]), 1024.0 / 10_000.0), "{out:?}");
    assert!(close(ttft(&out[1]), 64.0 / 10_000.0), "{out:?}");
    let p = e.prefix_cache();
    assert_eq!((p.queried_tokens, p.hit_tokens), (2048, 960));
    assert_eq!(e.counters().prompt_tokens, 1024 + 64);
}

#[test]
fn the_full_prefix_of_a_cached_prompt_still_computes_its_last_token() {
    let mut e = Engine::new(class());
    replay(&mut e, &[(0.0, req(7, 320, 1)), (1.0, req(7, 320, 1))]).unwrap();
    assert_eq!(e.counters().prompt_tokens, 320 + 1);
}

#[test]
fn a_full_kv_cache_preempts_the_newest_and_recomputes_it() {
    let mut c = class();
    c.kv_tokens = 64; // four blocks
    let mut e = Engine::new(c);
    let out = replay(&mut e, &[(0.0, req(1, 16, 40)), (0.0, req(2, 16, 40))]).unwrap();
    let c = e.counters();
    assert!(c.preemptions >= 1, "{c:?}");
    assert_eq!(
        c.generation_tokens, 80,
        "every token once, none lost or repeated"
    );
    assert_eq!(c.finished, 2);
    // The older one kept its blocks and finished first.
    assert!(out[0].done < out[1].done, "{out:?}");
    // Recomputation shows in the prompt tokens computed.
    assert!(c.prompt_tokens > 32, "{c:?}");
    assert_eq!(e.kv_usage(), 0.0);
}

#[test]
fn preemption_is_reported_as_an_event() {
    let mut c = class();
    c.kv_tokens = 64;
    let mut e = Engine::new(c);
    e.submit(req(1, 16, 40)).unwrap();
    e.submit(req(2, 16, 40)).unwrap();
    let mut seen = false;
    while let Some(s) = e.step() {
        seen |= s.events.contains(&Event::Preempted(2));
        assert!(
            !s.events.contains(&Event::Preempted(1)),
            "the oldest kept its place"
        );
    }
    assert!(seen);
}

#[test]
fn a_full_batch_queues_the_rest() {
    let mut c = class();
    c.max_seqs = 2;
    let mut e = Engine::new(c);
    for id in 1..=3 {
        e.submit(req(id, 16, 3)).unwrap();
    }
    e.step().unwrap();
    assert_eq!((e.running(), e.waiting()), (2, 1));
}

#[test]
fn refused_requests() {
    let mut c = class();
    c.kv_tokens = 64;
    let mut e = Engine::new(c);
    assert_eq!(
        e.submit(req(1, 60, 10)),
        Err(SubmitError::TooLong {
            tokens: 70,
            kv_tokens: 64
        })
    );
    assert_eq!(e.submit(req(2, 0, 10)), Err(SubmitError::Empty));
    assert!(e.idle());
}

/// splitmix64: a seeded stream for the arrival tests.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }
}

/// The mean wait of 40,000 Poisson arrivals of `make(i)` on a one-slot
/// engine of `c` at utilisation `rho` (service `service` seconds), over
/// Pollaczek-Khinchine's `rho S / (2 (1 - rho))`. `waited` is how long a
/// request waited, given its outcome.
fn m_d_1_ratio(
    c: &Class,
    service: f64,
    rho: f64,
    seed: u64,
    make: impl Fn(u64) -> Request,
    waited: impl Fn(&super::sim::Outcome) -> f64,
) -> f64 {
    let mut c = c.clone();
    c.max_seqs = 1;
    let mut e = Engine::new(c);
    let mut rng = Rng(seed);
    let mut t = 0.0;
    let arrivals: Vec<(f64, Request)> = (0..40_000)
        .map(|i| {
            t += rng.exp(service / rho);
            (t, make(i))
        })
        .collect();
    let out = replay(&mut e, &arrivals).unwrap();
    let wait = out.iter().map(&waited).sum::<f64>() / out.len() as f64;
    let want = rho * service / (2.0 * (1.0 - rho));
    eprintln!(
        "rho {rho}: mean wait {wait:.5} s, M/D/1 {want:.5} s, ratio {:.3}",
        wait / want
    );
    wait / want
}

/// One slot and fixed-work requests under Poisson arrivals is M/D/1.
#[test]
fn one_slot_under_poisson_arrivals_waits_as_m_d_1() {
    let c = class();
    let service = 1000.0 / c.prefill_tokens_per_s;
    for rho in [0.5, 0.8] {
        let r = m_d_1_ratio(
            &c,
            service,
            rho,
            42,
            |i| req(i, 1000, 0),
            |o| o.done - o.arrival - service,
        );
        assert!((0.9..1.1).contains(&r), "rho {rho}: {r}");
    }
}

#[test]
fn profiles_parse_and_refuse_bad_figures() {
    let good = r#"
[[class]]
name = "h100"
source = "x"
prefill_tokens_per_s = 40000
decode_ms_base = 6.0
decode_ms_per_seq = 0.05
kv_tokens = 450000
max_seqs = 256
"#;
    let p = Profile::parse(good, "p.toml").unwrap();
    assert_eq!(p.class("h100").unwrap().block_tokens, 16);
    assert_eq!(p.class("h100").unwrap().kv_blocks(), 28_125);
    let cases = [
        (good.replace("max_seqs = 256", "max_seqs = 0"), "max_seqs 0"),
        (good.replace("40000", "-1"), "prefill_tokens_per_s -1"),
        (
            good.replace("decode_ms_base = 6.0", "decode_ms_base = nan"),
            "decode_ms_base NaN",
        ),
        (
            good.replace("kv_tokens = 450000", "kv_tokens = 8"),
            "must hold one block",
        ),
        (good.replace("source", "sauce"), "unknown field"),
        (format!("{good}{good}"), "defined twice"),
        ("class = []".to_string(), "no [[class]]"),
        ("[[class]\n".to_string(), "p.toml"),
    ];
    for (text, want) in cases {
        let err = Profile::parse(&text, "p.toml").unwrap_err();
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
    }
    let err = Profile::load(std::path::Path::new("/nonexistent/p.toml")).unwrap_err();
    assert!(matches!(err, ProfileError::Read { .. }), "{err}");
}

/// As above, with the service made of decode steps (one-token prompts,
/// 20 tokens out: 19 steps of 10 ms), as in the fleet bench's check.
#[test]
fn decode_service_under_poisson_arrivals_waits_as_m_d_1() {
    let mut c = class();
    c.decode_ms_per_seq = 0.0;
    c.prefill_tokens_per_s = 1e9;
    let r = m_d_1_ratio(
        &c,
        0.19,
        0.6,
        11,
        |i| req(i, 1, 20),
        |o| o.first.unwrap_or(o.done) - o.arrival,
    );
    assert!((0.9..1.1).contains(&r), "{r}");
}
