use super::{
    ForecastError, Model,
    backtest::{self, BacktestError, Settings},
    ets::Ets,
    metrics,
    mstl::Mstl,
    naive::SeasonalNaive,
    series::{Series, SeriesError},
};

/// Ten days of 5-minute steps: a daily cycle around a slow rise, with
/// deterministic noise (a linear congruential draw, so runs repeat).
fn daily(days: usize) -> Vec<f64> {
    let per_day = 288;
    let mut seed: u64 = 7;
    (0..days * per_day)
        .map(|i| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 10.0;
            let phase = i as f64 * std::f64::consts::TAU / per_day as f64;
            100.0 + 0.01 * i as f64 + 50.0 * phase.sin() + noise
        })
        .collect()
}

#[test]
fn seasonal_naive_repeats_the_last_season_with_a_band_above() {
    let h = [1.0, 2.0, 3.0, 1.0, 2.0, 5.0];
    let f = SeasonalNaive { period: 3 }.forecast(&h, 4).unwrap();
    assert_eq!(f.point, vec![1.0, 2.0, 5.0, 1.0]);
    // Season-over-season changes are 0, 0, 2: the P90 adds 2.
    assert_eq!(f.p90, vec![3.0, 4.0, 7.0, 3.0]);
    let last = SeasonalNaive { period: 1 }.forecast(&h, 2).unwrap();
    assert_eq!(last.point, vec![5.0, 5.0]);
}

#[test]
fn bad_histories_are_refused_by_every_model() {
    let models: [&dyn Model; 3] = [&SeasonalNaive { period: 2 }, &Ets, &Mstl::default()];
    for m in models {
        assert_eq!(m.forecast(&[1.0; 20], 0), Err(ForecastError::NoHorizon));
        assert!(matches!(
            m.forecast(&[1.0; 2], 3),
            Err(ForecastError::TooShort { have: 2, .. })
        ));
        let mut h = vec![1.0; 20];
        h[4] = f64::NAN;
        assert!(matches!(
            m.forecast(&h, 3),
            Err(ForecastError::BadPoint { index: 4, .. })
        ));
        h[4] = -1.0;
        assert!(matches!(
            m.forecast(&h, 3),
            Err(ForecastError::BadPoint { index: 4, .. })
        ));
    }
}

#[test]
fn mstl_learns_a_daily_cycle_that_ets_cannot() {
    let y = daily(10);
    let (history, actual) = y.split_at(9 * 288);
    let horizon = 72;
    let actual = &actual[..horizon];
    let score = |m: &dyn Model| {
        let f = m.forecast(history, horizon).unwrap();
        assert_eq!(f.point.len(), horizon);
        assert!(f.p90.iter().zip(&f.point).all(|(u, p)| u >= p));
        metrics::mase(actual, &f.point, history, 288).unwrap()
    };
    let mstl = score(&Mstl {
        periods: vec![288, 2016],
    });
    let naive = score(&SeasonalNaive { period: 288 });
    let ets = score(&Ets);
    assert!(
        mstl < 0.8 * naive,
        "mstl {mstl:.3}, seasonal naive {naive:.3}"
    );
    assert!(mstl < 0.5 * ets, "mstl {mstl:.3}, ets {ets:.3}");
}

#[test]
fn mstl_without_a_period_the_history_holds_is_ets() {
    let y = daily(1);
    let a = Mstl {
        periods: vec![2016],
    }
    .forecast(&y, 5)
    .unwrap();
    assert_eq!(a, Ets.forecast(&y, 5).unwrap());
}

#[test]
fn metrics_on_known_values() {
    let history = [1.0, 3.0, 1.0, 3.0];
    // Naive in-sample MAE at lag 1: 2.
    assert_eq!(
        metrics::mase(&[2.0, 4.0], &[3.0, 3.0], &history, 1),
        Some(0.5)
    );
    assert_eq!(metrics::mase(&[2.0], &[3.0], &[5.0, 5.0], 1), None);
    assert_eq!(metrics::mase(&[2.0], &[3.0], &[5.0], 1), None);
    assert!((metrics::smape(&[100.0, 0.0], &[50.0, 0.0]) - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(metrics::smape(&[], &[]), 0.0);
    assert_eq!(metrics::coverage(&[1.0, 2.0, 3.0, 4.0], &[2.0; 4]), 0.5);
}

#[test]
fn points_and_arrivals_become_equal_steps() {
    // 5-minute points, one missing (repeats the previous), two in one step.
    let p = [
        (0.0, 4.0),
        (300.0, 6.0),
        (900.0, 1.0),
        (1200.0, 2.0),
        (1210.0, 3.0),
    ];
    let s = Series::from_points(&p).unwrap();
    assert_eq!(s.step_s, 300.0);
    assert_eq!(s.values, vec![4.0, 6.0, 6.0, 1.0, 5.0]);
    assert_eq!(s.periods(), vec![288, 2016]);
    let a = Series::from_arrivals(&[0.5, 10.0, 61.0, 179.0, 150.0], 60.0).unwrap();
    assert_eq!(a.values, vec![2.0, 1.0, 2.0]);
    assert!(a.periods() == vec![1440, 10_080]);
    assert_eq!(
        Series::from_points(&[(1.0, 1.0)]),
        Err(SeriesError::TooFew(1))
    );
    assert_eq!(
        Series::from_points(&[(0.0, 1.0), (1.0, -1.0)]),
        Err(SeriesError::BadPoint(1))
    );
    assert_eq!(
        Series::from_arrivals(&[0.0, 1.0], 0.0),
        Err(SeriesError::BadStep(0.0))
    );
    assert!(matches!(
        Series::from_points(&[(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (1e9, 1.0)]),
        Err(SeriesError::TooLong(_))
    ));
    assert!(matches!(
        Series::from_points(&[(0.0, 1.0), (1e-300, 1.0), (2e-300, 1.0), (1e300, 1.0)]),
        Err(SeriesError::TooLong(_))
    ));
    assert!(matches!(
        Series::from_arrivals(&[0.0, 1e300], 1.0),
        Err(SeriesError::TooLong(_))
    ));
    // A 7-minute step: no whole day, a whole week of 1,440 steps.
    let odd = Series::from_points(&[(0.0, 1.0), (420.0, 1.0)]).unwrap();
    assert_eq!(odd.periods(), vec![1440]);
}

#[test]
fn origins_spread_over_the_second_half_and_every_model_sees_them() {
    let s = Settings {
        horizon: 10,
        origins: 5,
        max_history: 1000,
        min_history: 20,
    };
    assert_eq!(
        backtest::origins(100, &s).unwrap(),
        vec![50, 60, 70, 80, 90]
    );
    assert!(matches!(
        backtest::origins(25, &s),
        Err(BacktestError::TooShort { len: 25, .. })
    ));
    let y = daily(3);
    let models: [&dyn Model; 2] = [&SeasonalNaive { period: 288 }, &Ets];
    let scores = backtest::evaluate(
        &y,
        &models,
        &Settings {
            horizon: 12,
            origins: 4,
            max_history: 500,
            min_history: 300,
        },
        288,
    )
    .unwrap();
    assert_eq!(scores.len(), 2);
    for sc in &scores {
        assert_eq!(sc.runs.len(), 4);
        assert!(sc.mase.is_some_and(|m| m > 0.0) && (0.0..=1.0).contains(&sc.coverage));
    }
    assert_eq!(scores[0].runs[0].at, scores[1].runs[0].at);
}

#[test]
fn a_one_off_burst_a_day_ago_is_not_forecast_again() {
    let mut history = daily(9);
    let n = history.len();
    // A burst 50x the level, one day before the 11th step forecast.
    history[n - 288 + 10] = 50.0 * history[n - 288 + 10].max(100.0);
    let naive = SeasonalNaive { period: 288 }
        .forecast(&history, 24)
        .unwrap();
    let mstl = Mstl {
        periods: vec![288, 2016],
    }
    .forecast(&history, 24)
    .unwrap();
    assert!(naive.point[10] >= 5000.0, "{}", naive.point[10]);
    // The day's cycle peaks near 150: robust STL leaves the burst in the
    // remainder instead of the season.
    assert!(mstl.point[10] < 400.0, "{:?}", &mstl.point[8..13]);
}

#[test]
fn a_flat_or_idle_history_is_forecast_flat() {
    for v in [0.0, 5.0] {
        let h = vec![v; 600];
        let models: [&dyn Model; 3] = [
            &SeasonalNaive { period: 288 },
            &Ets,
            &Mstl { periods: vec![288] },
        ];
        for m in models {
            let f = m
                .forecast(&h, 6)
                .unwrap_or_else(|e| panic!("{}: {e}", m.name()));
            assert!(
                f.point.iter().all(|p| (p - v).abs() < 1e-6 * v.max(1.0)),
                "{}: {:?}",
                m.name(),
                f.point
            );
        }
    }
}
