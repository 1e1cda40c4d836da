//! Telemetry: the parser on every real exporter sample, fuzzed with mutations
//! of them; presets reading the right signals; and scrapes of garbage,
//! truncated, huge, slow and failing endpoints, each failing alone, clearly
//! and in bounded time.

use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use balancer::{
    control::prom::{self, Limits},
    control::telemetry::{
        ServerKind, Signals, presets,
        scrape::{ScrapeError, ScrapeLimits, Scraper},
    },
};
use balancer_tests::{patience, shared_data};
use bytes::Bytes;
use http_body_util::{StreamBody, combinators::BoxBody};
use hyper::{Response, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng, rngs::StdRng};

const SAMPLES: &[(&str, ServerKind, usize)] = &[
    (
        "prometheus/vllm-metrics-datadog-fixture.txt",
        ServerKind::Vllm,
        185,
    ),
    (
        "prometheus/triton-metrics-datadog-fixture.txt",
        ServerKind::Triton,
        377,
    ),
    (
        "prometheus/dcgm-exporter-metrics-datadog-fixture.txt",
        ServerKind::Dcgm,
        38,
    ),
    (
        "prometheus/node_exporter-e2e-output.txt",
        ServerKind::Node,
        3027,
    ),
];

fn read(rel: &str) -> String {
    std::fs::read_to_string(shared_data(rel)).unwrap()
}

#[test]
fn every_real_sample_parses_completely() {
    for (file, _, samples) in SAMPLES {
        let e =
            prom::parse(&read(file), &Limits::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(e.samples.len(), *samples, "{file}");
    }
}

#[test]
fn presets_read_the_right_signals() {
    let get = |i: usize| {
        let (f, k, _) = SAMPLES[i];
        presets::extract(k, &prom::parse(&read(f), &Limits::default()).unwrap())
    };
    let v = get(0);
    assert_eq!(
        (v.queue_waiting, v.requests_running, v.kv_cache),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    assert_eq!(v.gen_tokens, Some(7.0));
    assert!(v.models.unwrap().contains("facebook/opt-125m"));
    let t = get(1);
    assert_eq!(t.queue_waiting, Some(0.0));
    assert_eq!(t.gpu_util, Some(0.0));
    assert_eq!(t.gpu_mem_used, Some(266_338_304.0));
    assert_eq!(t.gpu_mem_free, Some(16_106_127_360.0 - 266_338_304.0));
    assert!(t.models.unwrap().contains("densenet_onnx"));
    let d = get(2);
    assert_eq!(d.gpu_util, Some(0.0));
    assert_eq!(
        d.gpu_mem_free,
        Some(15_109.0 * 1024.0 * 1024.0),
        "MiB normalised to bytes"
    );
    assert!((d.gpu_power_w.unwrap() - 8.969).abs() < 1e-9);
    let n = get(3);
    assert!(n.cpu_total_s.unwrap() > n.cpu_idle_s.unwrap());
    assert_eq!(n.mem_total, Some(3.831959552e9));
    let avail = n.mem_available.unwrap();
    assert!(
        (avail - (2.30883328e8 + 9.53229312e8 + 2.256896e7)).abs() < 1.0,
        "{avail}"
    );
    assert_eq!(
        (n.tcp_out_segs, n.tcp_retrans_segs),
        (Some(5.4915039e7), Some(227.0))
    );
    let s = Signals::derive(None, &n);
    assert!(s.mem.unwrap() > 0.5 && s.mem.unwrap() < 0.8);
}

#[test]
fn fuzzed_samples_never_panic_and_stay_bounded() {
    let bases: Vec<String> = SAMPLES.iter().map(|(f, _, _)| read(f)).collect();
    let mut rng = StdRng::seed_from_u64(0x7072_6f6d);
    let limits = Limits::default();
    let (mut ok, mut err) = (0, 0);
    let t0 = Instant::now();
    let n = balancer_tests::scaled(20_000) as usize;
    for i in 0..n {
        let base = bases[i % 3].as_bytes(); // the small ones; node is 376 kB
        let mut b = base.to_vec();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            1 => b.truncate(rng.random_range(0..b.len())),
            2 => {
                let at = rng.random_range(0..b.len());
                let ins: Vec<u8> = (0..rng.random_range(1..64))
                    .map(|_| {
                        *b"{}\",=\\ #\n0e+-.:aZ_"
                            .get(rng.random_range(0..19))
                            .unwrap_or(&b'x')
                    })
                    .collect();
                b.splice(at..at, ins);
            }
            _ => {
                b = (0..rng.random_range(0..2048))
                    .map(|_| rng.random())
                    .collect()
            }
        }
        let text = String::from_utf8_lossy(&b);
        match prom::parse(&text, &limits) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.line >= 1 && e.col >= 1, "{e}");
                err += 1;
            }
        }
    }
    assert!(ok > n / 20 && err > n / 20, "ok {ok}, err {err}");
    assert!(
        t0.elapsed() < patience(Duration::from_secs(120)),
        "{:?}",
        t0.elapsed()
    );
    // Pathological sizes are refused, not ground through.
    let many = "x 1\n".repeat(300_000);
    assert!(
        prom::parse(&many, &limits)
            .unwrap_err()
            .message
            .contains("more than")
    );
    let wide = format!(
        "x{{{}}} 1",
        (0..100)
            .map(|i| format!("l{i}=\"v\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(
        prom::parse(&wide, &limits)
            .unwrap_err()
            .message
            .contains("labels")
    );
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(s.into()).boxed()
}

/// A loopback server with misbehaving endpoints.
async fn bad_server(vllm: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let vllm = vllm.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let vllm = vllm.clone();
                    async move {
                        let resp: Response<Body> = match req.uri().path() {
                            "/good" => Response::new(full(vllm)),
                            "/garbage" => Response::new(full(vec![0xffu8, 0x00, 0x12, 0x80])),
                            "/text-garbage" => {
                                Response::new(full("<html>this is not metrics</html>"))
                            }
                            "/truncated" => Response::new(full(
                                vllm[..vllm.len() / 2].to_string() + "vllm:x{a=\"",
                            )),
                            "/huge" => Response::new(full(vec![b'#'; 8 * 1024 * 1024])),
                            "/slow" => {
                                // Well past the scrape timeout, at any scale.
                                tokio::time::sleep(patience(Duration::from_secs(5))).await;
                                Response::new(full(vllm))
                            }
                            "/drip" => {
                                // Headers at once, then a byte a second forever.
                                let stream = futures_util::stream::unfold(0u64, |n| async move {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    Some((
                                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"#"))),
                                        n + 1,
                                    ))
                                });
                                use http_body_util::BodyExt;
                                Response::new(StreamBody::new(stream).boxed())
                            }
                            _ => Response::builder().status(500).body(full("boom")).unwrap(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[test]
fn bad_endpoints_fail_alone_clearly_and_quickly() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = bad_server(read(SAMPLES[0].0)).await;
        let scraper = Scraper::new();
        // The timeout and the bound on the whole run are the host's, scaled
        // with patience (and /slow with them).
        let limits = ScrapeLimits {
            timeout: patience(Duration::from_millis(700)),
            max_body: 1024 * 1024,
        };
        let paths = [
            "/good",
            "/garbage",
            "/text-garbage",
            "/truncated",
            "/huge",
            "/slow",
            "/drip",
            "/error",
        ];
        let t0 = Instant::now();
        let futs = paths.iter().map(|p| {
            let url = format!("http://{addr}{p}");
            let scraper = scraper.clone();
            async move {
                (
                    p.to_string(),
                    scraper.scrape(&url, ServerKind::Vllm, &limits).await,
                )
            }
        });
        let results = futures_util::future::join_all(futs).await;
        let elapsed = t0.elapsed();
        assert!(
            elapsed < patience(Duration::from_millis(1500)),
            "scrapes ran concurrently and bounded: {elapsed:?}"
        );
        for (p, r) in results {
            match (p.as_str(), &r) {
                ("/good", Ok(reading)) => assert_eq!(reading.gen_tokens, Some(7.0)),
                ("/garbage", Err(ScrapeError::NotUtf8)) => {}
                ("/text-garbage", Err(ScrapeError::Parse(e))) => assert_eq!(e.line, 1, "{e}"),
                ("/truncated", Err(ScrapeError::Parse(e))) => {
                    assert!(e.line > 100, "located in the cut line: {e}")
                }
                ("/huge", Err(ScrapeError::TooLarge(_))) => {}
                ("/slow" | "/drip", Err(ScrapeError::Timeout(_))) => {}
                ("/error", Err(ScrapeError::Status(500))) => {}
                _ => panic!("{p}: unexpected {r:?}"),
            }
            if let Err(e) = &r {
                assert!(!e.to_string().is_empty());
            }
        }
        // A refused connection and a bad URL are clear too.
        let r = scraper
            .scrape("http://127.0.0.1:1/metrics", ServerKind::Vllm, &limits)
            .await;
        assert!(matches!(r, Err(ScrapeError::Http(_))), "{r:?}");
        let r = scraper
            .scrape("ftp://x/metrics", ServerKind::Vllm, &limits)
            .await;
        assert!(matches!(r, Err(ScrapeError::Url(_))), "{r:?}");
    });
}
