//! Helpers shared by the crate's unit tests.

use std::time::Duration;

/// The time to allow for something that takes up to `d` on the host: `d`
/// divided by `$BALANCER_TEST_SCALE` (in (0, 1]; the VM suite sets it below
/// 1), as the integration suites' `patience` does.
pub(crate) fn patience(d: Duration) -> Duration {
    let scale = std::env::var("BALANCER_TEST_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f: &f64| *f > 0.0 && *f <= 1.0)
        .unwrap_or(1.0);
    d.div_f64(scale)
}

/// The slack a test allows on top of a deadline it checks: generous, since
/// the suites also run under a slow emulated CPU.
pub(crate) fn margin() -> Duration {
    patience(Duration::from_secs(30))
}
