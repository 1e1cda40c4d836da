use std::sync::{Arc, atomic::Ordering};

use super::*;
use crate::{
    cache::pick::pool,
    route::{
        cost::{Accuracy, Backend},
        prefix::{self, BLOCK_BYTES},
    },
};

fn work(prompt_tokens: u32, output_tokens: u32, text: &[u8], heavy: bool) -> Work {
    Work {
        model: "m".into(),
        prompt_tokens,
        output_tokens,
        prompt_bytes: text.len().max(1) as u64,
        blocks: prefix::blocks(text),
        stream: true,
        heavy,
    }
}

/// Teaches `b` that it prefills at `s_per_k` seconds per 1,000 tokens,
/// decodes at `tpot`, and pays `per_req` a request in flight.
fn teach(b: &Backend, s_per_k: f64, per_req: f64, tpot: f64) {
    for i in 0..300u32 {
        let w = work(100 + (i % 9) * 400, 1, b"", false);
        let n = (i % 4) as u64;
        let p = b.predict(&w, n);
        let x1 = (w.prompt_tokens as f64) / 1000.0;
        b.teach(&p, 0.02 + s_per_k * x1 + per_req * n as f64);
    }
    b.set_tpot(tpot);
}

/// The members `n` requests of `w` went to, in turn, each released before
/// the next (indices into `members`).
fn placed(w: &Work, members: &[Member], n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let ask = Ask {
                key: 0,
                work: Some(w),
                affine: false,
                cold_start_s: None,
            };
            let (m, _g) = super::super::pick_for(&Aware, &ask, members).unwrap();
            members.iter().position(|x| x.addr == m.addr).unwrap()
        })
        .collect()
}

fn choose_of<'a>(w: &Work, members: &'a [Member]) -> Choice<'a> {
    choose(&Ask::key(1), w, members).expect("a backend")
}

#[test]
fn an_idle_pool_of_untried_backends_rotates() {
    let members = pool(&[1, 1, 1]);
    let w = work(100, 10, b"", false);
    let mut seen = placed(&w, &members, 3);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn placement_follows_the_learned_speeds() {
    // Member 0 is a small class, member 1 a big one.
    let members = pool(&[1, 1]);
    teach(&members[0].cost, 2.0, 0.2, 0.06);
    teach(&members[1].cost, 0.2, 0.02, 0.012);
    let table: &[(&str, Work, u64, usize, Reason)] = &[
        (
            "a light request, both idle: the faster first token",
            work(200, 20, b"", false),
            0,
            1,
            Reason::Fastest,
        ),
        (
            "a light request with the big class busy: the idle small one",
            work(50, 20, b"", false),
            40,
            0,
            Reason::Fastest,
        ),
        (
            "a heavy request with the big class as busy: still the big one",
            work(3000, 800, b"", true),
            40,
            1,
            Reason::Earliest,
        ),
    ];
    for (what, w, busy, want, reason) in table {
        members[1].in_flight.store(*busy, Ordering::Relaxed);
        let c = choose_of(w, &members);
        assert_eq!(c.member.addr, members[*want].addr, "{what}: {c:?}");
        assert_eq!(c.reason, *reason, "{what}");
    }
}

#[test]
fn a_shared_prefix_sticks_until_its_holder_saturates() {
    let members = pool(&[1, 1, 1]);
    // Requests share a 20-block system prompt, then differ.
    let shared = b"s".repeat(BLOCK_BYTES * 20);
    let request = |i: usize| {
        let text = [
            shared.clone(),
            format!("{:x<1$}", i, BLOCK_BYTES * 20).into_bytes(),
        ]
        .concat();
        work(2560, 50, &text, false)
    };
    members[2].cost.prefix.insert(&request(0).blocks[..20]);
    let acc = Arc::new(Accuracy::default());
    let mut held = Vec::new();
    let mut order = Vec::new();
    for i in 1..=12 {
        let w = request(i);
        let c = choose_of(&w, &members);
        order.push((c.member.addr == members[2].addr, c.reason));
        // Each request's prefill waits there: its first token never comes.
        held.push(c.member.cost.dispatch(&w, c.prediction, acc.clone()));
        c.member.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    // Half of each prompt (1,280 tokens) is new: the holder takes the first
    // ones, until the prefill waiting there makes it predicted more than
    // twice as slow as an idle backend computing the whole prompt.
    let stuck = order
        .iter()
        .take_while(|(h, r)| *h && *r == Reason::Prefix)
        .count();
    assert!(stuck >= 3, "{order:?}");
    assert!(
        order.iter().filter(|(h, _)| !h).count() >= 4,
        "then they spread: {order:?}"
    );
    assert!(
        order.iter().all(|(h, r)| *h == (*r == Reason::Prefix)),
        "the holder only ever by its prefix: {order:?}"
    );
    let fresh = pool(&[1, 1, 1]);
    let first = choose_of(&request(1), &fresh);
    assert_eq!(first.reason, Reason::Fastest, "no holder, no stickiness");
}

#[test]
fn a_cacheable_miss_keeps_its_keys_backend_and_no_body_means_least_request() {
    let members = pool(&[1, 1, 1, 1]);
    let w = work(100, 10, b"", false);
    for key in [3u64, 99, 12345] {
        let ask = Ask {
            key,
            work: Some(&w),
            affine: true,
            cold_start_s: None,
        };
        let by_key = BoundedHash.select(&ask, &members).unwrap().addr;
        let c = choose(&ask, &w, &members).unwrap();
        assert_eq!((c.member.addr, c.reason), (by_key, Reason::Key));
    }
    members[0].in_flight.store(5, Ordering::Relaxed);
    let got = Aware.select(&Ask::key(1), &members).unwrap().addr;
    assert_ne!(got, members[0].addr, "the busy one is left");
}

#[test]
fn only_backends_that_list_the_model_are_candidates() {
    let mut members = pool(&[1, 1, 1, 1]);
    let lists = |names: &[&str]| Some(Arc::new(names.iter().map(|n| n.to_string()).collect()));
    members[0].models = lists(&["m"]);
    members[1].models = lists(&["m", "sql-lora"]);
    members[2].models = lists(&["m", "sql-lora"]);
    // members[3] never answered: unknown.
    let table: &[(&str, &str, &[usize])] = &[
        ("an adapter: the two that have it", "sql-lora", &[1, 2]),
        ("the base model: the three that list it", "m", &[0, 1, 2]),
        ("a model nobody lists: anywhere", "new-model", &[0, 1, 2, 3]),
    ];
    for (what, model, want) in table {
        let w = Work {
            model: model.to_string(),
            ..work(100, 10, b"", false)
        };
        let seen: std::collections::BTreeSet<usize> =
            placed(&w, &members, 40).into_iter().collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), *want, "{what}");
    }
}

#[test]
fn the_gateways_zone_is_kept_until_it_saturates() {
    use crate::route::zone::Place;
    // Members 0 and 1 are in the gateway's zone, 2 is remote and faster.
    let mut members = pool(&[1, 1, 1]);
    for (m, place) in members
        .iter_mut()
        .zip([Place::Local, Place::Local, Place::Remote])
    {
        m.place = place;
    }
    teach(&members[0].cost, 0.5, 0.05, 0.02);
    teach(&members[1].cost, 0.5, 0.05, 0.02);
    teach(&members[2].cost, 0.4, 0.04, 0.02);
    let w = work(400, 20, b"", false);
    // {description, in flight on each member, where it goes}
    let table: &[(&str, [u64; 3], &[usize])] = &[
        ("idle: home, though remote is faster", [0, 0, 0], &[0, 1]),
        (
            "home busier, within twice remote's time",
            [2, 2, 0],
            &[0, 1],
        ),
        ("home over twice remote's time: spills", [4, 4, 0], &[2]),
        ("home out of balance: spills", [12, 12, 0], &[2]),
        ("remote busy too: home again", [12, 12, 12], &[0, 1]),
    ];
    for (what, load, expect) in table {
        for (m, n) in members.iter().zip(load) {
            m.in_flight.store(*n, Ordering::Relaxed);
        }
        let c = choose_of(&w, &members);
        let at = members
            .iter()
            .position(|m| m.addr == c.member.addr)
            .unwrap();
        assert!(expect.contains(&at), "{what}: went to {at}");
    }
    // Without zones (all unknown), the faster remote one wins when idle.
    for m in &mut members {
        m.place = Place::Unknown;
        m.in_flight.store(0, Ordering::Relaxed);
    }
    let c = choose_of(&w, &members);
    assert_eq!(c.member.addr, members[2].addr, "no zones: the fastest");
}

/// Two backends equal in speed and load: the one behind the slower path
/// (its probes take 80 ms against 1 ms) is left alone until the faster
/// one's queue costs more than the path does.
#[test]
fn a_slow_network_path_counts_against_its_backend() {
    let members = pool(&[1, 1]);
    for m in &members {
        teach(&m.cost, 0.1, 0.01, 0.01);
    }
    members[0].cost.observe_rtt(0.08);
    members[1].cost.observe_rtt(0.001);
    let w = work(500, 10, b"", false);
    assert_eq!(placed(&w, &members, 10), vec![1; 10]);
    // Twelve requests ahead on the near one (12 × 10 ms) outweigh the path.
    members[1].in_flight.store(12, Ordering::Relaxed);
    assert_eq!(choose_of(&w, &members).member.addr, members[0].addr);
}

/// Locality with a cold start: the server of the model keeps it until it
/// is predicted slower than a load (5 s here); then a backend that listed
/// other models gets it, said as `load`; one whose models are unknown
/// (starting, or loading) never does. Without a cold-start cost nothing
/// leaves the server.
#[test]
fn a_load_is_chosen_only_when_it_beats_every_server() {
    let mut members = pool(&[1, 1, 1]);
    let list = |names: &[&str]| {
        Some(Arc::new(
            names
                .iter()
                .map(|n| n.to_string())
                .collect::<std::collections::BTreeSet<_>>(),
        ))
    };
    members[0].models = list(&["m"]);
    members[1].models = list(&["other"]);
    members[2].models = None;
    for m in &members {
        teach(&m.cost, 0.1, 0.5, 0.01);
    }
    let w = work(500, 10, b"", false);
    let with = |cold: Option<f64>| Ask {
        key: 0,
        work: Some(&w),
        affine: false,
        cold_start_s: cold,
    };
    let pick = |cold| choose(&with(cold), &w, &members).expect("a backend");
    assert_eq!(pick(Some(5.0)).member.addr, members[0].addr, "idle server");
    assert_eq!(pick(Some(5.0)).candidates, 2, "the unknown one is out");
    // 20 in flight at 0.5 s each: 10 s on the server, 5 s plus a little
    // for a load.
    members[0].in_flight.store(20, Ordering::Relaxed);
    let c = pick(Some(5.0));
    assert_eq!((c.member.addr, c.reason), (members[1].addr, Reason::Load));
    assert!(c.prediction.ttft_s >= 5.0, "{:?}", c.prediction);
    let c = pick(None);
    assert_eq!((c.member.addr, c.candidates), (members[0].addr, 1), "never");
    // The same for a cacheable miss: the key may not pull it off the server.
    let affine = Ask {
        affine: true,
        ..with(Some(60.0))
    };
    members[0].in_flight.store(0, Ordering::Relaxed);
    for key in 0..50 {
        let a = Ask { key, ..affine };
        assert_eq!(
            choose(&a, &w, &members).unwrap().member.addr,
            members[0].addr
        );
    }
}

/// A backend the model stopped choosing is measured again: once idle and
/// sent nothing for [`EXPLORE_AFTER`], one light placement in
/// [`EXPLORE_EVERY`] goes there, never a heavy one nor to a busy one.
#[test]
fn a_backend_left_unmeasured_is_explored_now_and_then() {
    let members = pool(&[1, 1, 1]);
    teach(&members[0].cost, 0.1, 0.01, 0.01);
    teach(&members[1].cost, 0.5, 0.01, 0.05);
    teach(&members[2].cost, 0.5, 0.01, 0.05);
    let light = work(200, 10, b"light", false);
    let c = choose_of(&light, &members);
    assert_eq!(
        (c.member.addr, c.reason),
        (members[0].addr, Reason::Fastest)
    );

    members[1]
        .cost
        .age(EXPLORE_AFTER + std::time::Duration::from_secs(5));
    members[2].cost.age(EXPLORE_AFTER * 2);
    let c = choose_of(&light, &members);
    assert_eq!(
        (c.member.addr, c.reason),
        (members[2].addr, Reason::Explore),
        "the longest unmeasured"
    );
    let heavy = work(200, 10, b"heavy", true);
    assert_eq!(choose_of(&heavy, &members).reason, Reason::Earliest);

    members[2].in_flight.store(1, Ordering::Relaxed);
    let c = choose_of(&light, &members);
    assert_eq!(
        (c.member.addr, c.reason),
        (members[1].addr, Reason::Explore)
    );
    members[2].in_flight.store(0, Ordering::Relaxed);

    // Not on the other fifteen placements in sixteen.
    members[0].picked.store(1, Ordering::Relaxed);
    assert_eq!(choose_of(&light, &members).reason, Reason::Fastest);
    members[0].picked.store(EXPLORE_EVERY, Ordering::Relaxed);

    // Sending there makes it fresh.
    let acc = Arc::new(Accuracy::default());
    let p = members[2].cost.predict(&light, 0);
    drop(members[2].cost.dispatch(&light, p, acc));
    let c = choose_of(&light, &members);
    assert_eq!(
        (c.member.addr, c.reason),
        (members[1].addr, Reason::Explore)
    );
}
