//! vLLM's priority scheduling in the engine model: the queue's order, the
//! preemption victim, and the refusal under first come, first served.

use super::{
    engine::{Engine, Event, Policy, Request, SubmitError},
    prefix::chain,
    profile::Class,
    sim::replay,
};

/// The engine tests' class with one batch slot, so the order requests
/// start in is the queue's order.
fn class() -> Class {
    Class {
        max_seqs: 1,
        ..super::tests::class()
    }
}

fn req(id: u64, priority: i64, prompt: u32, max: u32) -> Request {
    Request {
        id,
        prompt_tokens: prompt,
        max_tokens: max,
        blocks: chain((0..prompt / 16).map(|b| id * 1000 + b as u64)),
        priority,
    }
}

/// The ids in the order their first tokens came.
fn first_token_order(policy: Policy, arrivals: &[(f64, Request)]) -> Vec<u64> {
    let mut e = Engine::new(class());
    e.set_policy(policy);
    let mut out = replay(&mut e, arrivals).unwrap();
    out.sort_by(|a, b| a.first.partial_cmp(&b.first).unwrap());
    out.iter().map(|o| o.id).collect()
}

#[test]
fn the_queue_runs_lower_priorities_first_and_in_arrival_order_within_one() {
    // One batch slot: the order requests start in is the queue's order.
    let arrivals = [
        (0.0, req(1, 0, 32, 20)),
        (0.001, req(2, 5, 32, 2)),
        (0.001, req(3, 5, 32, 2)),
        (0.001, req(4, -1, 32, 2)),
        (0.001, req(5, 0, 32, 2)),
    ];
    assert_eq!(
        first_token_order(Policy::Priority, &arrivals),
        [1, 4, 5, 2, 3],
        "1 runs first (alone when it came), then -1, 0, and the two 5s as they came"
    );
    let fcfs: Vec<_> = arrivals
        .iter()
        .map(|(t, r)| {
            (
                *t,
                Request {
                    priority: 0,
                    ..r.clone()
                },
            )
        })
        .collect();
    assert_eq!(first_token_order(Policy::Fcfs, &fcfs), [1, 2, 3, 4, 5]);
}

#[test]
fn first_come_first_served_refuses_a_priority_as_vllm_does() {
    let mut e = Engine::new(class());
    let err = e.submit(req(1, 3, 16, 1)).unwrap_err();
    assert_eq!(err, SubmitError::PriorityOff(3));
    assert!(
        err.to_string().contains("--scheduling-policy priority"),
        "{err}"
    );
    e.submit(req(2, 0, 16, 1)).unwrap();
}

/// Runs a low-priority request (id 1) admitted first and an urgent one
/// (id 2) admitted after it, on a KV cache too small for both to finish
/// together; the ids preempted.
fn preempted(policy: Policy) -> Vec<u64> {
    let mut c = class();
    c.max_seqs = 8;
    c.kv_tokens = 64; // four blocks: two each at admission, none to grow
    let mut e = Engine::new(c);
    e.set_policy(policy);
    let (low, urgent) = match policy {
        Policy::Fcfs => (0, 0),
        Policy::Priority => (9, 0),
    };
    e.submit(req(1, low, 16, 40)).unwrap();
    let mut seen = Vec::new();
    let mut record = |events: &[Event]| {
        for ev in events {
            if let Event::Preempted(id) = ev {
                seen.push(*id);
            }
        }
    };
    let s = e.step().unwrap();
    record(&s.events);
    e.submit(req(2, urgent, 16, 40)).unwrap();
    while let Some(s) = e.step() {
        record(&s.events);
    }
    assert_eq!(
        e.counters().generation_tokens,
        80,
        "every token exactly once"
    );
    seen
}

#[test]
fn preemption_takes_the_least_urgent_not_the_newest() {
    let fcfs = preempted(Policy::Fcfs);
    assert!(
        !fcfs.is_empty() && fcfs.iter().all(|&id| id == 2),
        "{fcfs:?}"
    );
    let prio = preempted(Policy::Priority);
    assert!(
        !prio.is_empty() && prio.iter().all(|&id| id == 1),
        "{prio:?}"
    );
}

#[test]
fn a_sequence_that_just_finished_is_never_preempted() {
    // A (least urgent) is admitted first and decodes its last token in the
    // step where B, behind it in the batch, needs a block and none is free.
    // A's blocks are freed at the end of that step; sending A back to the
    // queue would make it generate a token more than it asked for.
    let mut c = class();
    c.max_seqs = 8;
    c.kv_tokens = 64; // four blocks
    let mut e = Engine::new(c);
    e.set_policy(Policy::Priority);
    e.submit(req(1, 9, 16, 3)).unwrap();
    e.step().unwrap();
    e.submit(req(2, 0, 31, 5)).unwrap();
    let mut preempted = Vec::new();
    while let Some(s) = e.step() {
        preempted.extend(s.events.iter().filter_map(|ev| match ev {
            Event::Preempted(id) => Some(*id),
            _ => None,
        }));
    }
    assert!(!preempted.contains(&1), "{preempted:?}");
    assert_eq!(
        e.counters().generation_tokens,
        3 + 5,
        "every token exactly once"
    );
    assert_eq!(e.counters().finished, 2);
}
