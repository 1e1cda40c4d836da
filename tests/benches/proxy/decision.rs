//! The routing decision alone, in this process: what `aware` does for each
//! request before and after it is sent (parse the body, estimate tokens,
//! hash the prompt's blocks, predict every backend, choose, follow the
//! answer and learn from it), timed request by request, against
//! round-robin's choice over the same pool. End-to-end p99s on two shared
//! cores are mostly the scheduler's queueing; this is the routing's own
//! cost, the part a faster machine would not hide.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use balancer::{
    cache::pick::{self, Ask, Member, Selector, aware, round_robin::RoundRobin},
    route::{
        cost::{Accuracy, Heaviness, Work},
        request,
        tokens::Tokens,
        zone::Place,
    },
};
use balancer_tests::loadgen::percentile;

/// A pool of four backends serving `m`.
fn pool() -> Vec<Member> {
    let models: Arc<BTreeSet<String>> = Arc::new(["m".to_string()].into());
    (0..4u8)
        .map(|i| Member {
            addr: SocketAddr::from(([10, 0, 0, i + 1], 8000)),
            weight: 1,
            in_flight: Arc::default(),
            picked: Arc::default(),
            cost: Arc::default(),
            models: Some(models.clone()),
            place: Place::Unknown,
        })
        .collect()
}

/// Chat requests of a 2 KiB prompt sharing a 1 KiB system prompt, and the
/// events of a short streamed answer with its usage.
fn requests() -> Vec<Vec<u8>> {
    let system = "You are a helpful assistant for a shop. ".repeat(26);
    (0..64)
        .map(|i| {
            serde_json::json!({
                "model": "m",
                "stream": true,
                "max_tokens": 64,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": format!("question {i}: {}", "where is my order? ".repeat(52))},
                ],
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

const ANSWER: [&[u8]; 3] = [
    b"data: {\"choices\":[{\"text\":\"Hello\"}]}\n\n",
    b"data: {\"choices\":[{\"text\":\" there\"}],\"usage\":{\"prompt_tokens\":520,\"completion_tokens\":2}}\n\n",
    b"data: [DONE]\n\n",
];

/// p50, p99 and p99.9 of `n` decisions by `decide`.
fn timed(n: usize, mut decide: impl FnMut(usize)) -> [Duration; 3] {
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        decide(i);
        t.push(start.elapsed());
    }
    [
        percentile(&mut t, 0.50),
        percentile(&mut t, 0.99),
        percentile(&mut t, 0.999),
    ]
}

/// Prints the decision's cost per request for round-robin and `aware`.
pub fn run(n: usize) {
    let bodies = requests();
    let members = pool();
    let rr = timed(n, |i| {
        let ask = Ask::key(i as u64);
        let chosen = RoundRobin.select(&ask, &members).map(pick::take);
        std::hint::black_box(chosen);
    });
    let tokens = Arc::new(Tokens::default());
    let heaviness = Heaviness::default();
    let accuracy = Arc::new(Accuracy::default());
    let aware_t = timed(n, |i| {
        let body = &bodies[i % bodies.len()];
        let Some(shape) = request::parse(body) else {
            return;
        };
        let w = Work::of(&shape, &tokens, &heaviness);
        let ask = Ask {
            key: i as u64,
            work: Some(&w),
            affine: false,
            cold_start_s: None,
        };
        let Some(c) = aware::choose(&ask, &w, &members) else {
            return;
        };
        let guard = pick::take(c.member);
        let mut d = c.member.cost.dispatch(&w, c.prediction, accuracy.clone());
        d.tap_usage(tokens.clone(), &w.model, w.prompt_bytes);
        d.answered(true);
        for chunk in ANSWER {
            d.chunk(chunk);
        }
        drop(d);
        drop(guard);
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nrouting decision alone, in-process, {n} requests (2 KiB chat prompts, 4 backends; aware: parse, tokens, block hashes, 4 predictions, choice, following and learning from a 3-event answer):"
    );
    println!(
        "{:<14} {:>9} {:>9} {:>10}",
        "", "p50 us", "p99 us", "p99.9 us"
    );
    for (name, t) in [("round-robin", rr), ("aware", aware_t)] {
        println!(
            "{name:<14} {:>9.2} {:>9.2} {:>10.2}",
            us(t[0]),
            us(t[1]),
            us(t[2])
        );
    }
    println!(
        "aware's decision adds {:.1} us p99 over round-robin's (target: at most 100 us)",
        us(aware_t[1]) - us(rr[1])
    );
}
