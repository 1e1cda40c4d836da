//! Scenario files: the shipped one with a mix parses, and bad files are
//! refused with an error naming the field.

use super::{plan, scenario::Scenario};

/// A valid scenario over the shipped profile, with a mix.
fn good() -> String {
    r#"
name = "t"
duration_s = 60

[fleet]
profile = "profiles/llama-3.1-8b.toml"
model = "m"
nodes = [{ class = "h100", count = 1 }, { class = "cpu", count = 1 }]

[workload]
trace = "traces/arrivals/AzureLLMInferenceTrace_conv.csv"
mean_rps = 5.0
max_prompt_tokens = 2048
max_output_tokens = 64

[[workload.mix]]
model = "resnet-50"
share = 0.3
units = [0.05, 1.0]

[[workload.mix]]
model = "whisper-large-v3"
share = 0.2
units = [5.0, 10.0]

[shape]
peak_to_average = 4.0

[[tier]]
name = "all"
share = 1.0
ttft_s = 1.0
e2e_s = 10.0
"#
    .to_string()
}

fn parse(text: &str) -> anyhow::Result<Scenario> {
    Scenario::parse(text, &crate::scenarios_dir())
}

#[test]
fn a_mix_parses_and_plans_its_shares_and_sizes() {
    let s = parse(&good()).unwrap();
    assert_eq!(s.workload.mix.len(), 2);
    assert!(s.workload.mix[1].speech && !s.workload.mix[0].speech);
    let names: Vec<String> = s.mixed_models().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["resnet-50", "whisper-large-v3"]);
    let p = plan::plan(&s).unwrap();
    let n = p.requests.len() as f64;
    let share = |m: &str| {
        p.requests
            .iter()
            .filter(|r| r.task.as_ref().is_some_and(|t| t.model == m))
            .count() as f64
            / n
    };
    // 300 draws: within four standard deviations of the shares.
    assert!(
        (share("resnet-50") - 0.3).abs() < 0.11,
        "{}",
        share("resnet-50")
    );
    assert!((share("whisper-large-v3") - 0.2).abs() < 0.1);
    for r in &p.requests {
        match &r.task {
            Some(t) => {
                let (lo, hi) = if t.speech { (5.0, 10.0) } else { (0.05, 1.0) };
                assert!((lo..=hi).contains(&t.units), "{t:?}");
                assert_eq!(
                    t.elements,
                    if t.speech {
                        0
                    } else {
                        (t.units * 3e6).ceil() as u64
                    }
                );
                assert_eq!(
                    (r.prompt_tokens, r.output_tokens, r.blocks.len()),
                    (0, 0, 0)
                );
            }
            None => assert!(r.prompt_tokens > 0 && r.output_tokens > 0),
        }
    }
    // A mix leaves the tiers' draws as they were without one.
    let plain = good().replace("[[workload.mix]]", "[[old]]");
    let plain = plain.split("[[old]]").next().unwrap().to_string()
        + "[shape]\npeak_to_average = 4.0\n\n[[tier]]\nname = \"all\"\nshare = 1.0\nttft_s = 1.0\ne2e_s = 10.0\n";
    let q = plan::plan(&parse(&plain).unwrap()).unwrap();
    let times = |p: &plan::Plan| p.requests.iter().map(|r| r.at_s).collect::<Vec<_>>();
    assert_eq!(times(&p), times(&q));
}

#[test]
fn bad_scenarios_are_refused_naming_the_field() {
    let cases: [(&str, &str, &str, &str); 12] = [
        (
            "no duration",
            "duration_s = 60",
            "duration_s = 0",
            "duration_s = 0",
        ),
        (
            "an unknown class",
            "class = \"cpu\"",
            "class = \"tpu\"",
            "no class \"tpu\"",
        ),
        ("an unknown field", "seed_x = 0", "", ""),
        (
            "a zero rate",
            "mean_rps = 5.0",
            "mean_rps = 0",
            "workload.mean_rps",
        ),
        (
            "a missing trace",
            "AzureLLMInferenceTrace_conv.csv",
            "nope.csv",
            "workload.trace",
        ),
        (
            "a flat curve with a ratio",
            "peak_to_average = 4.0",
            "peak_to_average = 4.0\ncurve = \"flat\"",
            "flat curve",
        ),
        ("tier shares", "share = 1.0", "share = 0.5", "sum to 0.5"),
        (
            "an unknown model",
            "model = \"resnet-50\"",
            "model = \"resnet-5000\"",
            "no [[model]] of that name",
        ),
        ("mix shares over 1", "share = 0.3", "share = 0.9", "over 1"),
        (
            "a mix size out of range",
            "units = [0.05, 1.0]",
            "units = [1.0, 0.05]",
            "units[1]",
        ),
        (
            "a body too large",
            "units = [0.05, 1.0]",
            "units = [0.05, 2.0]",
            "-byte body",
        ),
        (
            "a model given twice",
            "model = \"whisper-large-v3\"\nshare = 0.2\nunits = [5.0, 10.0]",
            "model = \"resnet-50\"\nshare = 0.2\nunits = [0.05, 1.0]",
            "given twice",
        ),
    ];
    for (what, from, to, expect) in cases {
        let text = if from == "seed_x = 0" {
            good().replace("duration_s = 60", "duration_s = 60\nseed_x = 0")
        } else {
            assert!(good().contains(from), "{what}: {from}");
            good().replacen(from, to, 1)
        };
        let e = format!("{:#}", parse(&text).expect_err(what));
        assert!(e.contains(expect), "{what}: {e}");
    }
}

/// `[route]` reaches the gateway's route as the daemon would read it; keys
/// the bench sets, unknown keys and bad values are refused, naming them.
#[test]
fn route_settings_are_checked_as_the_daemon_checks_them() {
    let with = |route: &str| format!("{}\n[route]\n{route}", good());
    let s = parse(&with(
        "default_tier = \"critical\"\nmax_in_flight = 8\n[route.queue]\nmax_waiting = 64\n",
    ))
    .unwrap();
    assert_eq!(s.route["max_in_flight"].as_integer(), Some(8));
    let text = super::scenario::route_config("aware", &["127.0.0.1:9".into()], &s.route);
    let cfg = balancer::config::Config::parse(std::path::Path::new("t"), &text).unwrap();
    let r = &cfg.cache_routes[0].route;
    assert_eq!(r.pick, balancer::cache::pick::Pick::Aware);
    assert!(!r.cache);
    assert!(r.shedding.is_some_and(|s| s.queue.is_some()));
    assert!(parse(&good()).unwrap().route.is_empty());
    // The shipped tiered scenarios load, each with its route's settings.
    let dir = crate::scenarios_dir().join("tiers");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let s = Scenario::load(&f.unwrap().path()).unwrap();
        assert_eq!(s.route["default_tier"].as_str(), Some("critical"));
        n += 1;
    }
    assert!(n >= 3, "{n} scenarios in {}", dir.display());
    for (bad, says) in [
        ("pick = \"random\"\n", "route.pick"),
        ("backends = [\"10.0.0.1:1\"]\n", "route.backends"),
        ("max_request_bytes = 1024\n", "route.max_request_bytes"),
        ("max_in_flight = 0\n", "max_in_flight"),
        ("no_such_key = 1\n", "no_such_key"),
        ("[route.queue]\nmax_waiting = 5\n", "max_in_flight"),
    ] {
        let e = parse(&with(bad)).unwrap_err();
        assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
    }
}
