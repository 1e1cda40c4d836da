//! Telemetry-driven weights on the namespace testbed: emulated inference
//! backends report vLLM metrics, the daemon scrapes them, and the kernel's
//! ring follows. Established connections never move.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use balancer::api::client::Client;
use balancer_tests::{
    loadgen, patience, require_root,
    server::AdminConfig,
    testbed::{Spec, Testbed, VIP, VIP_PORT},
    testbed_bin,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A testbed whose VIP has telemetry: every backend's vLLM `/metrics`.
fn telemetry_testbed(backends: usize, extra: &str) -> Testbed {
    telemetry_testbed_with(backends, extra, |_, a| {
        format!("{{ kind = \"vllm\", url = \"http://{a}:80/metrics\" }}")
    })
}

/// As [`telemetry_testbed`], with backend `i`'s metrics endpoint (TOML
/// inline table) from `endpoint(i, address)`.
fn telemetry_testbed_with(
    backends: usize,
    extra: &str,
    endpoint: impl Fn(usize, std::net::Ipv4Addr) -> String,
) -> Testbed {
    require_root();
    let mut tb = Testbed::up(Spec::unique(
        1,
        backends,
        testbed_bin(env!("CARGO_BIN_EXE_testbed")),
    ))
    .expect("testbed");
    // The control loop's clock slows down with the machine, as the test's
    // deadlines do: the same number of ticks fits in every wait.
    let interval = patience(Duration::from_millis(400)).as_millis();
    let slow_start = patience(Duration::from_secs(2)).as_secs_f64();
    let stale = patience(Duration::from_secs(3)).as_millis();
    let mut vip = format!(
        "[[vip]]\nvip = \"{VIP}:{VIP_PORT}/tcp\"\n\n[vip.telemetry]\ninterval_ms = {interval}\nmodel = \"test-model\"\n{extra}\n\n[vip.telemetry.policy]\nslow_start_s = {slow_start}\nstale_after_ms = {stale}\n"
    );
    for (i, b) in tb.backends.iter().enumerate() {
        vip.push_str(&format!(
            "\n[[vip.backend]]\naddress = \"{a}\"\nmetrics = [{e}]\n",
            a = b.addr,
            e = endpoint(i, b.addr)
        ));
    }
    let cfg = tb.config(&vip);
    tb.start_daemon(&cfg).unwrap();
    tb
}

/// Published weights and ring slots per backend.
fn weights(client: &Client, rt: &tokio::runtime::Runtime) -> Weights {
    let vips = rt.block_on(client.vips()).unwrap();
    vips[0]
        .backends
        .iter()
        .map(|b| (b.addr, (b.effective_weight, b.ring_slots)))
        .collect()
}

type Weights = BTreeMap<IpAddr, (u32, u64)>;

/// Polls until `cond` holds on the weights, or fails after `limit` (the
/// host's; it grows with [`patience`]). Returns how long it took and the
/// weights that met it.
fn wait_for(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Weights) -> bool,
) -> (Duration, Weights) {
    let limit = patience(limit);
    let t0 = Instant::now();
    let mut last = BTreeMap::new();
    while t0.elapsed() < limit {
        last = weights(client, rt);
        if cond(&last) {
            return (t0.elapsed(), last);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let explain = rt
        .block_on(client.weights())
        .map(|w| format!("{:#?}", w.pools))
        .unwrap_or_default();
    panic!("{what}: not within {limit:?}; weights {last:?}\n{explain}");
}

#[test]
fn a_filled_queue_takes_weight_away_and_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tb = telemetry_testbed(3, "");
    let client = tb.client();
    let rt = rt();
    let b1: IpAddr = tb.backends[0].addr.into();
    // Steady state: all equal after the slow start.
    wait_for(
        &client,
        &rt,
        Duration::from_secs(15),
        "equal weights",
        |w| w.values().all(|(x, _)| *x >= 900),
    );
    // The connections run through every wait below and are stopped after
    // them (the cap only bounds a failed run). A request slower than 2 s
    // (scaled) counts as a stall.
    let stop = loadgen::Stop::new();
    let conns = loadgen::long_lived(
        &tb.clients[0].ns,
        tb.vip(),
        24,
        patience(Duration::from_secs(20)),
        Duration::from_millis(50),
        patience(Duration::from_secs(2)),
        &stop,
    );
    std::thread::sleep(Duration::from_millis(500));
    tb.emulator_admin(
        0,
        &AdminConfig {
            phantom_waiting: Some(40),
            ..AdminConfig::default()
        },
    )
    .unwrap();
    let (took, _) = wait_for(
        &client,
        &rt,
        Duration::from_secs(4),
        "b1's weight falls",
        |w| {
            let (mine, slots) = w[&b1];
            let others = w
                .iter()
                .filter(|(a, _)| **a != b1)
                .map(|(_, (x, _))| *x)
                .min()
                .unwrap_or(0);
            mine * 4 < others
                && slots * 4
                    < w.iter()
                        .filter(|(a, _)| **a != b1)
                        .map(|(_, (_, s))| *s)
                        .min()
                        .unwrap_or(0)
        },
    );
    eprintln!("queue of 40 on b1: weight and kernel ring followed in {took:?}");
    let expl = rt.block_on(client.weights()).unwrap();
    let d = expl.pools[0]
        .decisions
        .iter()
        .find(|d| d.addr == b1)
        .unwrap();
    assert!(
        d.why.contains("queue"),
        "explanation names the queue: {}",
        d.why
    );
    // The queue drains: the weight comes back.
    tb.emulator_admin(
        0,
        &AdminConfig {
            phantom_waiting: Some(0),
            ..AdminConfig::default()
        },
    )
    .unwrap();
    wait_for(&client, &rt, Duration::from_secs(6), "b1 recovers", |w| {
        w[&b1].0 >= 900
    });
    stop.stop();
    let results = conns.join().unwrap().unwrap();
    for (i, r) in results.iter().enumerate() {
        assert!(r.error.is_none(), "conn {i}: {:?}", r.error);
        assert_eq!(r.backends.len(), 1, "conn {i} moved: {:?}", r.backends);
    }
}

#[test]
fn a_four_times_slower_backend_loses_weight_under_load() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tb = telemetry_testbed(3, "");
    let client = tb.client();
    let rt = rt();
    let b1: IpAddr = tb.backends[0].addr.into();
    wait_for(
        &client,
        &rt,
        Duration::from_secs(15),
        "equal weights",
        |w| w.values().all(|(x, _)| *x >= 900),
    );
    tb.emulator_admin(
        0,
        &AdminConfig {
            speed: Some(0.25),
            ..AdminConfig::default()
        },
    )
    .unwrap();
    // Enough concurrent requests to fill a slowed GPU's 8 slots.
    // The load lasts longer than the wait (both scaled) and stops once the
    // weight has fallen: the weight can only fall under load.
    let ns = tb.clients[0].ns.clone();
    let vip = tb.vip();
    let stop = loadgen::Stop::new();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let d = patience(Duration::from_secs(8));
            // A slow machine sends fewer requests a second; longer answers
            // (the emulator's tokens take wall-clock time) keep as many of
            // them in flight, so the slowed GPU's slots still fill. Squared,
            // for a guest slowed further by a loaded host.
            let stretch = patience(Duration::from_secs(1)).as_secs_f64();
            let tokens = (64.0 * stretch * stretch).round() as u32;
            loadgen::completions(&ns, vip, d, 48, "test-model", tokens, &stop)
        })
    };
    let (took, _) = wait_for(
        &client,
        &rt,
        Duration::from_secs(7),
        "slow b1 loses weight",
        |w| {
            let others = w
                .iter()
                .filter(|(a, _)| **a != b1)
                .map(|(_, (x, _))| *x)
                .min()
                .unwrap_or(0);
            w[&b1].0 * 2 < others
        },
    );
    eprintln!("b1 at 1/4 speed: weight fell to half of the others' in {took:?}");
    stop.stop();
    let r = load.join().unwrap().unwrap();
    assert!(r.failed() == 0, "{:?}", r.errors);
}

#[test]
fn a_dead_backend_goes_to_zero_and_ramps_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tb = telemetry_testbed(2, "fall = 2\nrise = 2");
    let client = tb.client();
    let rt = rt();
    let b1: IpAddr = tb.backends[0].addr.into();
    wait_for(
        &client,
        &rt,
        Duration::from_secs(15),
        "equal weights",
        |w| w.values().all(|(x, _)| *x >= 900),
    );
    tb.stop_server(0);
    wait_for(&client, &rt, Duration::from_secs(5), "b1 down", |w| {
        w[&b1] == (0, 0)
    });
    let st = rt.block_on(client.status()).unwrap();
    let reason = &st.down.iter().find(|d| d.addr == b1).unwrap().reason;
    assert!(reason.contains("failed scrapes"), "{reason}");
    // New connections all reach b2 meanwhile.
    let r = loadgen::short_connections(&tb.clients[0].ns, tb.vip(), 300, 8).unwrap();
    assert_eq!(r.ok, 300, "{:?}", r.errors);
    tb.start_server(0, Duration::ZERO).unwrap();
    // Back, through the slow start: first part way, then all the way.
    // The ramp is checked on the first weights that show b1 back: a later
    // read could already be at the end of a ramp on a slow machine.
    let (partial, w) = wait_for(&client, &rt, Duration::from_secs(5), "b1 ramping", |w| {
        w[&b1].0 > 0
    });
    assert!(
        w[&b1].0 < 900,
        "a returning backend ramps, it does not jump: {w:?}"
    );
    let (full, _) = wait_for(
        &client,
        &rt,
        Duration::from_secs(10),
        "b1 fully back",
        |w| w[&b1].0 >= 900,
    );
    eprintln!(
        "b1 back after {partial:?}, at full weight after {:?} more",
        full
    );
}

/// A backend with an empty `/metrics` and one scraped as the wrong kind are
/// not idle: neither draws more than its hint's share, the weights report
/// says why, and status and `/metrics` name them.
#[test]
fn empty_or_wrong_kind_telemetry_never_draws_more_than_its_hint() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tb = telemetry_testbed_with(3, "", |i, a| match i {
        0 => format!("{{ kind = \"vllm\", url = \"http://{a}:80/metrics/empty\" }}"),
        // vLLM's names read as Triton's: nothing recognised.
        1 => format!("{{ kind = \"triton\", url = \"http://{a}:80/metrics\" }}"),
        _ => format!("{{ kind = \"vllm\", url = \"http://{a}:80/metrics\" }}"),
    });
    let client = tb.client();
    let rt = rt();
    let addr = |i: usize| -> IpAddr { tb.backends[i].addr.into() };
    let (empty, wrong, good) = (addr(0), addr(1), addr(2));
    // Equal hints (weight 1 each): a fair share is a third.
    let (_, w) = wait_for(
        &client,
        &rt,
        Duration::from_secs(15),
        "the healthy backend takes the most",
        |w| w[&good].0 >= 900,
    );
    let total: u64 = w.values().map(|(_, s)| *s).sum();
    for b in [empty, wrong] {
        let (weight, slots) = w[&b];
        assert!(weight < w[&good].0, "{b} out-weighs the healthy one: {w:?}");
        assert!(slots * 3 <= total, "{b} holds more than its share: {w:?}");
    }
    let report = rt.block_on(client.weights()).unwrap();
    for (b, kind) in [(empty, "vllm"), (wrong, "triton")] {
        let d = report.pools[0]
            .decisions
            .iter()
            .find(|d| d.addr == b)
            .unwrap();
        assert!(d.unknown, "{d:?}");
        assert!(
            d.why
                .contains(&format!("no recognised signal (kind {kind})")),
            "{}",
            d.why
        );
    }
    let st = rt.block_on(client.status()).unwrap();
    let named: Vec<IpAddr> = st.unknown_telemetry.iter().map(|d| d.addr).collect();
    assert_eq!(named, vec![empty, wrong], "{st:?}");
    let text = tb.daemon_metrics().unwrap();
    for (b, v) in [(empty, 1), (wrong, 1), (good, 0)] {
        let line = format!(
            "balancer_backend_telemetry_unknown{{vip=\"{VIP}:{VIP_PORT}/tcp\",backend=\"{b}\"}} {v}"
        );
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
}
