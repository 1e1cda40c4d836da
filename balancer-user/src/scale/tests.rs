use std::time::Duration;

use super::{Planner, Reason, ScaleError, ScaleSettings};

fn settings() -> ScaleSettings {
    ScaleSettings {
        min: 1,
        max: 20,
        capacity: 10.0,
        headroom: 0.2,
        lead_time: Duration::from_secs(300),
        cool_down: Duration::from_secs(600),
    }
}

fn at(minutes: u64) -> Duration {
    Duration::from_secs(minutes * 60)
}

#[test]
fn desired_replicas_follow_the_formula_within_bounds() {
    let s = settings();
    // ceil(45 / 10 x 1.2) = ceil(5.4) = 6.
    assert_eq!(s.desired(45.0), 6);
    assert_eq!(s.desired(0.0), 1);
    assert_eq!(s.desired(1e12), 20);
    assert_eq!(s.desired(f64::NAN), 1);
}

#[test]
fn bad_settings_are_refused() {
    let s = settings();
    for (bad, e) in [
        (
            ScaleSettings {
                max: 0,
                min: 0,
                ..s
            },
            ScaleError::Bounds { min: 0, max: 0 },
        ),
        (
            ScaleSettings {
                min: 5,
                max: 4,
                ..s
            },
            ScaleError::Bounds { min: 5, max: 4 },
        ),
        (
            ScaleSettings { capacity: 0.0, ..s },
            ScaleError::Capacity(0.0),
        ),
        (
            ScaleSettings {
                headroom: -0.1,
                ..s
            },
            ScaleError::Headroom(-0.1),
        ),
    ] {
        assert_eq!(bad.validate(), Err(e));
    }
    assert!(s.validate().is_ok());
}

#[test]
fn a_forecast_peak_scales_out_before_the_load_arrives() {
    let mut p = Planner::new(settings());
    // Load 20 needs 3; the forecast of 100 needs 12: out now, by forecast.
    let d = p.decide(at(0), 3, 20.0, Some(100.0));
    assert_eq!((d.desired, d.reason), (12, Reason::Forecast));
    // Reactive, the same moment holds: the load does not need more yet.
    let mut r = Planner::new(settings());
    assert_eq!(r.decide(at(0), 3, 20.0, None).reason, Reason::Hold);
}

#[test]
fn a_forecast_alone_never_scales_in() {
    let mut p = Planner::new(settings());
    // Observed load still needs 12; a forecast of a lull does not shrink it.
    for m in [0, 30, 60] {
        let d = p.decide(at(m), 12, 100.0, Some(1.0));
        assert_eq!((d.desired, d.reason), (12, Reason::Hold));
    }
    // Both low: in, once the cool-down since the last change has passed.
    let mut p = Planner::new(settings());
    assert_eq!(p.decide(at(0), 3, 100.0, None).desired, 12);
    assert_eq!(p.decide(at(5), 12, 1.0, Some(1.0)).reason, Reason::Hold);
    let d = p.decide(at(10), 12, 1.0, Some(1.0));
    assert_eq!((d.desired, d.reason), (1, Reason::ScaleIn));
    // Low load but a forecast peak: the pool keeps what the peak needs.
    let mut p = Planner::new(settings());
    let d = p.decide(at(0), 12, 1.0, Some(50.0));
    assert_eq!((d.desired, d.reason), (6, Reason::ScaleIn));
}
