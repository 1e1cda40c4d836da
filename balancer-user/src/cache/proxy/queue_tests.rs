//! The route's queue through the proxy: lower tiers wait for headroom and
//! then go on, critical passes them, and a wait that runs out is degraded
//! like a shed request (429 with `Retry-After`).

use std::sync::atomic::Ordering;

use super::{
    tier_tests::{holding, send, tiers},
    *,
};
use crate::route::{admission::Shedding, queue::QueueSettings};

/// A route of one slot (`max_in_flight` 1 on one backend) whose lower
/// tiers wait up to `wait`.
async fn one_slot(b: SocketAddr, wait: Duration) -> (SocketAddr, Arc<Route>) {
    let mut shedding = Shedding::new(1);
    shedding.queue = Some(QueueSettings {
        max_waiting: 8,
        standard_wait: wait,
        sheddable_wait: wait,
    });
    let cfg = RouteConfig {
        tiers: tiers(false),
        shedding: Some(shedding),
        ..testkit::config()
    };
    let l = bind(&cfg).await.unwrap();
    let r = l.local_addr().unwrap();
    let cache = Cache::new(crate::cache::Settings::default()).unwrap();
    let route = Route::new(cfg, cache, Arc::new(move || vec![(b, 1)]));
    tokio::spawn(route.clone().serve(l));
    (r, route)
}

/// Waits (up to the test margin) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + crate::testutil::margin();
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_lower_tier_waits_for_headroom_and_critical_passes_it() {
    let (b, held, release) = holding().await;
    // The wait never runs out in this test, however slow the machine.
    let (r, route) = one_slot(b, Duration::from_secs(600)).await;
    let first = tokio::spawn(send(r, &[]));
    until("the first request reaches the backend", || {
        held.load(Ordering::Relaxed) == 1
    })
    .await;
    let second = tokio::spawn(send(r, &[]));
    until("the second request queues", || {
        route.tier_counts().queued[1] == 1
    })
    .await;
    let critical = tokio::spawn(send(
        r,
        &[("x-api-key", "sk-1"), ("x-priority", "critical")],
    ));
    until("critical reaches the backend past the queue", || {
        held.load(Ordering::Relaxed) == 2
    })
    .await;
    assert!(!second.is_finished(), "standard still waits");
    assert_eq!(
        held.load(Ordering::Relaxed),
        2,
        "it never reached the backend"
    );
    // Once the pool has room again, the waiter goes on and is answered.
    release.add_permits(1);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(critical.await.unwrap().1, "critical");
    assert_eq!(second.await.unwrap().0, 200);
    assert_eq!(held.load(Ordering::Relaxed), 3);
    let t = route.tier_counts();
    assert_eq!((t.queued, t.shed), ([0, 1, 0], [0; 3]));
}

#[tokio::test]
async fn a_wait_that_runs_out_is_refused_with_retry_after() {
    let (b, held, release) = holding().await;
    let (r, route) = one_slot(b, Duration::from_millis(50)).await;
    let first = tokio::spawn(send(r, &[]));
    until("the first request reaches the backend", || {
        held.load(Ordering::Relaxed) == 1
    })
    .await;
    // Standard at 100% is admitted (its curve starts there), waits, and
    // its 50 ms run out while the backend holds the first.
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::post(format!("http://{r}/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap();
    let refused = client.request(req).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u32 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let t = route.tier_counts();
    assert_eq!((t.queued, t.shed), ([0, 1, 0], [0, 1, 0]));
    release.add_permits(1);
    assert_eq!(first.await.unwrap().0, 200);
}
