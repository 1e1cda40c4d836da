use std::sync::Arc;

use super::*;

fn work(prompt_tokens: u32, text: &[u8]) -> Work {
    Work {
        model: "m".into(),
        prompt_tokens,
        output_tokens: 100,
        prompt_bytes: text.len() as u64,
        blocks: prefix::blocks(text),
        stream: true,
        heavy: false,
    }
}

#[test]
fn the_fit_learns_a_slow_backends_own_slope() {
    let mut f = Rls::new();
    // A slow class: 0.3 s fixed, 2 s per 1,000 prefill tokens, 50 ms a
    // request in flight; features vary as load does.
    for i in 0..400u32 {
        let x = [1.0, (i % 7) as f64 * 0.8, (i % 5) as f64];
        f.update(x, 0.3 + 2.0 * x[1] + 0.05 * x[2]);
    }
    let want = [0.3, 2.0, 0.05];
    for (got, want) in f.theta.iter().zip(want) {
        assert!((got - want).abs() < 0.01, "{:?}", f.theta);
    }
}

#[test]
fn constant_features_do_not_blow_the_fit_up() {
    let mut f = Rls::new();
    for _ in 0..100_000 {
        f.update([1.0, 0.5, 0.0], 1.0);
    }
    assert!(f.theta.iter().all(|t| t.is_finite()), "{:?}", f.theta);
    let y: f64 = f.theta[0] + 0.5 * f.theta[1];
    assert!((y - 1.0).abs() < 0.01, "{:?}", f.theta);
}

#[test]
fn a_held_prefix_and_the_prefill_ahead_move_the_prediction() {
    let b = Arc::new(Backend::default());
    let acc = Arc::new(Accuracy::default());
    let text = b"p".repeat(BLOCK_BYTES * 8);
    let w = work(512, &text);
    let cold = b.predict(&w, 0);
    assert_eq!((cold.matched_blocks, cold.uncached_tokens), (0, 512));
    let mut d = b.dispatch(&w, cold, acc.clone());
    d.answered(true);
    let busy = b.predict(&w, 1);
    assert_eq!(busy.prefill_ahead, 512, "the first request's prefill waits");
    assert!(busy.ttft_s > cold.ttft_s);
    d.chunk(b"data: {}\n\n");
    let warm = b.predict(&w, 1);
    assert_eq!(warm.prefill_ahead, 0, "its first token came back");
    assert_eq!((warm.matched_blocks, warm.uncached_tokens), (8, 0));
    assert!(warm.ttft_s < busy.ttft_s);
    d.chunk(b"data: {}\n\ndata: [DONE]\n\n");
    drop(d);
    assert_eq!(b.answers(), 1);
    assert_eq!(acc.ttft.mape().0, 1);
    assert_eq!(acc.e2e.mape().0, 1, "a complete stream counts end to end");
}

#[test]
fn a_failed_or_cut_answer_frees_its_prefill_and_teaches_nothing() {
    let b = Arc::new(Backend::default());
    let acc = Arc::new(Accuracy::default());
    let w = work(300, b"q");
    let d = b.dispatch(&w, b.predict(&w, 0), acc.clone());
    drop(d); // no answer at all
    assert_eq!(b.predict(&w, 0).prefill_ahead, 0);
    let mut d = b.dispatch(&w, b.predict(&w, 0), acc.clone());
    d.answered(true);
    d.chunk(b"data: {}\n\n");
    drop(d); // cut before [DONE]
    assert_eq!(
        acc.e2e.mape().0,
        0,
        "an unfinished stream is no end-to-end sample"
    );
    assert_eq!(b.answers(), 1, "its first token still taught the TTFT fit");
    let mut d = b.dispatch(&w, b.predict(&w, 0), acc.clone());
    d.answered(false);
    d.chunk(b"{\"error\":\"x\"}");
    drop(d);
    assert_eq!(b.answers(), 1, "an error teaches nothing");
}

#[test]
fn mape_is_the_mean_of_the_relative_errors() {
    let e = Errors::default();
    assert_eq!(e.mape(), (0, None));
    e.record(1.1, 1.0);
    e.record(0.7, 1.0);
    e.record(5.0, 0.0); // no actual time: not a sample
    let (n, m) = e.mape();
    assert_eq!(n, 2);
    assert!((m.unwrap() - 0.2).abs() < 1e-6, "{m:?}");
}

#[test]
fn heavy_is_relative_to_the_routes_own_traffic() {
    let h = Heaviness::default();
    let small = work(100, b"");
    for _ in 0..200 {
        assert!(!h.judge(&small));
    }
    assert!(h.judge(&work(5000, b"")));
    assert!(!h.judge(&work(150, b"")));
}

#[test]
fn uncached_counts_the_prompt_past_the_held_blocks() {
    let w = work(1000, &b"z".repeat(BLOCK_BYTES * 10));
    assert_eq!(w.uncached(0), 1000);
    assert_eq!(w.uncached(5), 500);
    assert_eq!(w.uncached(10), 0);
    assert_eq!(w.uncached(99), 0, "more than the prompt is all of it");
}

#[test]
fn an_answers_usage_calibrates_its_models_tokens() {
    let b = Arc::new(Backend::default());
    let acc = Arc::new(Accuracy::default());
    let tokens = Arc::new(crate::route::tokens::Tokens::default());
    let w = Work {
        stream: false,
        ..work(250, b"")
    };
    // A tokenizer at 2 bytes a token: 1,000 bytes were 500 tokens.
    for _ in 0..60 {
        let mut d = b.dispatch(&w, b.predict(&w, 0), acc.clone());
        d.tap_usage(tokens.clone(), "m", 1000);
        d.answered(true);
        d.chunk(br#"{"data":[],"usage":{"prompt_tokens":500,"completion_tokens":0}}"#);
    }
    let est = tokens.prompt_tokens("m", 1000);
    assert!((480..=520).contains(&est), "{est}");
    // A failed answer teaches nothing.
    let other = Arc::new(crate::route::tokens::Tokens::default());
    let mut d = b.dispatch(&w, b.predict(&w, 0), acc);
    d.tap_usage(other.clone(), "m", 1000);
    d.answered(false);
    d.chunk(br#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
    drop(d);
    assert_eq!(other.models(), 0);
}

/// The probe's round trip is added to the prediction as measured, and the
/// fit learns the rest: a backend taught with a 40 ms path predicts its
/// own 100 ms plus the path, and the path's change shows at once.
#[test]
fn the_network_round_trip_is_measured_not_fitted() {
    let b = Backend::default();
    let w = work(0, b"");
    assert_eq!(b.predict(&w, 0).network_s, 0.0, "no probe yet");
    b.observe_rtt(0.04);
    for _ in 0..300 {
        let p = b.predict(&w, 0);
        assert!((p.network_s - 0.04).abs() < 1e-12);
        b.teach(&p, 0.14);
    }
    let p = b.predict(&w, 0);
    assert!((p.ttft_s - 0.14).abs() < 0.005, "{p:?}");
    // The path gets slower: smoothed, the prediction follows the probes.
    for _ in 0..20 {
        b.observe_rtt(0.5);
    }
    let p = b.predict(&w, 0);
    assert!((b.rtt() - 0.5).abs() < 0.001, "{}", b.rtt());
    assert!((p.ttft_s - 0.6).abs() < 0.01, "{p:?}");
    // Nonsense is ignored; a hung probe counts at most its deadline.
    b.observe_rtt(f64::NAN);
    b.observe_rtt(-1.0);
    assert!((b.rtt() - 0.5).abs() < 0.001);
    b.observe_rtt(1e9);
    assert!(b.rtt() <= MAX_RTT_S);
}

/// A slow backend's first answer already sets its time per output token:
/// the prior (a fast backend) must not draw heavy requests to it for its
/// next answers.
#[test]
fn the_first_answer_outweighs_the_tpot_prior() {
    let b = Arc::new(Backend::default());
    let acc = Arc::new(Accuracy::default());
    let w = work(100, b"q");
    let mut d = b.dispatch(&w, b.predict(&w, 0), acc);
    d.answered(true);
    d.chunk(b"data: {}\n\n");
    // Four more tokens at no less than 30 ms each (sleeps only overrun).
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        d.chunk(b"data: {}\n\n");
    }
    d.chunk(b"data: [DONE]\n\n");
    drop(d);
    let (_, tpot) = b.speed();
    assert!(tpot >= 0.029, "one answer of 30 ms a token: {tpot}");
}
