use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use super::*;

fn queue(max_waiting: usize) -> Arc<Queue> {
    Queue::new(QueueSettings {
        max_waiting,
        standard_wait: Duration::from_secs(20),
        sheddable_wait: Duration::from_secs(10),
    })
}

/// Enters in a task of its own; the handle yields the slot when it comes.
fn wait(q: &Arc<Queue>, tier: Tier, tenant: &str, cap: usize) -> JoinHandle<Result<Slot, Refused>> {
    let q = q.clone();
    let tenant = tenant.to_owned();
    tokio::spawn(async move { q.enter(tier, &tenant, cap, None).await })
}

/// Lets spawned tasks run up to their next wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn free_slots_are_taken_at_once_and_critical_never_waits() {
    let q = queue(8);
    // {description, tier, slots taken before, admitted at once?}
    let cases = [
        ("a free slot", Tier::Sheddable, 0, true),
        ("the last free slot", Tier::Standard, 1, true),
        ("no free slot: standard waits", Tier::Standard, 2, false),
        (
            "no free slot: critical goes anyway",
            Tier::Critical,
            2,
            true,
        ),
    ];
    for (what, tier, before, at_once) in cases {
        let q = queue(8);
        let held: Vec<Slot> = futures_util::future::join_all(
            (0..before).map(|_| q.enter(Tier::Critical, "", 2, None)),
        )
        .await
        .into_iter()
        .map(|r| r.expect("critical"))
        .collect();
        let h = wait(&q, tier, "t", 2);
        settle().await;
        assert_eq!(h.is_finished(), at_once, "{what}");
        drop(held);
    }
    assert_eq!(q.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_best_tier_then_tenants_take_turns() {
    let q = queue(16);
    let first = q
        .enter(Tier::Standard, "x", 1, None)
        .await
        .expect("free slot");
    // Arrival order: sheddable s1, tenant a's a1 a2 a3, tenant b's b1.
    let mut order = Vec::new();
    for (name, tier, tenant) in [
        ("s1", Tier::Sheddable, "a"),
        ("a1", Tier::Standard, "a"),
        ("a2", Tier::Standard, "a"),
        ("a3", Tier::Standard, "a"),
        ("b1", Tier::Standard, "b"),
    ] {
        order.push((name, wait(&q, tier, tenant, 1)));
        settle().await;
    }
    assert_eq!(q.waiting(), 5);
    let mut served = Vec::new();
    let mut slot = first;
    for _ in 0..5 {
        drop(slot);
        settle().await;
        let i = order
            .iter()
            .position(|(_, h)| h.is_finished())
            .expect("one waiter got the freed slot");
        let (name, h) = order.remove(i);
        served.push(name);
        slot = h.await.expect("task").expect("granted");
        assert!(
            order.iter().all(|(_, h)| !h.is_finished()),
            "one slot, one grant"
        );
    }
    assert_eq!(served, ["a1", "b1", "a2", "a3", "s1"]);
}

#[tokio::test(start_paused = true)]
async fn a_new_arrival_does_not_overtake_its_tier_or_those_above() {
    let q = queue(16);
    let held = q
        .enter(Tier::Standard, "", 1, None)
        .await
        .expect("free slot");
    let waiting = wait(&q, Tier::Standard, "", 1);
    settle().await;
    // The pool grows to two slots: the waiter gets the new one, and a later
    // sheddable arrival still waits behind nobody but the capacity.
    let late = wait(&q, Tier::Sheddable, "", 2);
    settle().await;
    assert!(waiting.is_finished(), "the waiter took the new slot");
    assert!(!late.is_finished(), "no slot left for the late arrival");
    drop(held);
    settle().await;
    assert!(late.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passed_or_a_full_queue_refuses() {
    let q = queue(1);
    let _held = q
        .enter(Tier::Standard, "", 1, None)
        .await
        .expect("free slot");
    let standard = wait(&q, Tier::Standard, "", 1);
    settle().await;
    assert_eq!(
        q.enter(Tier::Sheddable, "", 1, None).await.err(),
        Some(Refused::Full),
        "one waiter is the queue's limit"
    );
    tokio::time::advance(Duration::from_secs(19)).await;
    settle().await;
    assert!(!standard.is_finished(), "within its 20 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    let got = standard.await.expect("task");
    assert_eq!(got.err(), Some(Refused::Expired));
    assert_eq!(q.waiting(), 0, "the expired waiter left the line");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_gives_its_place_or_its_slot_on() {
    let q = queue(8);
    let held = q
        .enter(Tier::Standard, "", 1, None)
        .await
        .expect("free slot");
    let gone = wait(&q, Tier::Standard, "", 1);
    let next = wait(&q, Tier::Standard, "", 1);
    settle().await;
    assert_eq!(q.waiting(), 2);
    gone.abort();
    settle().await;
    assert_eq!(q.waiting(), 1, "the leaver is out of line");
    drop(held);
    settle().await;
    let slot = next.await.expect("task").expect("the freed slot");
    // The slot goes on when its holder is done, and none is lost.
    let third = wait(&q, Tier::Standard, "", 1);
    settle().await;
    drop(slot);
    settle().await;
    third.await.expect("task").expect("granted");
    let after = q.enter(Tier::Standard, "", 1, None).await;
    assert!(after.is_ok(), "every slot came back");
}

#[tokio::test(start_paused = true)]
async fn a_turn_forecast_past_the_deadline_is_refused_at_once() {
    // Standard may wait 20 s, sheddable 10 s.
    let q = queue(16);
    let _held = q
        .enter(Tier::Standard, "", 1, None)
        .await
        .expect("free slot");
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(wait(&q, Tier::Standard, "", 1));
        settle().await;
    }
    // {description, tier, slots freeing a second, refused at once?}
    let cases = [
        (
            "5th in line at 1/s: 5 s, within 20",
            Tier::Standard,
            Some(1.0),
            false,
        ),
        (
            "5th at 0.2/s: 25 s, past 20",
            Tier::Standard,
            Some(0.2),
            true,
        ),
        ("unknown rate: it waits", Tier::Standard, None, false),
        (
            "sheddable, 5th at 0.4/s: 12.5 s, past 10",
            Tier::Sheddable,
            Some(0.4),
            true,
        ),
        ("critical never waits", Tier::Critical, Some(0.001), false),
    ];
    for (what, tier, rate, refused) in cases {
        let got = {
            let q = q.clone();
            tokio::time::timeout(Duration::from_millis(1), async move {
                q.enter(tier, "", 1, rate).await
            })
            .await
        };
        let forecast = matches!(got, Ok(Err(Refused::Forecast)));
        assert_eq!(forecast, refused, "{what}: {got:?}");
    }
}
