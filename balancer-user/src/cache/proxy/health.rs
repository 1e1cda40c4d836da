//! Passive health: a backend that keeps failing is left out for a while.
//!
//! The control plane's telemetry takes minutes to notice nothing (a static
//! pool has none at all); the proxy sees every failure as it happens. After
//! `after` failures in a row (no connection, no response head within the
//! route's timeout, a broken exchange), a backend is marked down for
//! `cooldown`: it gets no new requests unless every backend is down. When
//! the cooldown ends, the next request tries it again; one more failure
//! marks it down at once, a success clears the count.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// When a backend is marked down, and for how long (a route's
/// `mark_down_after` and `mark_down_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkDown {
    /// Failures in a row that mark a backend down.
    pub after: u32,
    /// How long it stays down.
    pub cooldown: Duration,
}

impl Default for MarkDown {
    fn default() -> Self {
        Self {
            after: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// One backend's record, updated lock-free from the request path.
#[derive(Debug, Default)]
pub(super) struct Passive {
    /// Failures since the last success.
    failures: AtomicU32,
    /// Until when (ms on the caller's clock) the backend is down; 0 when up.
    down_until_ms: AtomicU64,
}

impl Passive {
    /// Whether the backend is down at `now_ms`.
    pub(super) fn is_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Records a failure at `now_ms`; true when it marks the backend down.
    pub(super) fn fail(&self, md: MarkDown, now_ms: u64) -> bool {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < md.after.max(1) {
            return false;
        }
        let until = now_ms.saturating_add(md.cooldown.as_millis() as u64);
        self.down_until_ms.fetch_max(until, Ordering::Relaxed) < until
    }

    /// Records a success: the count starts over.
    pub(super) fn ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Event {
        Fail(u64),
        Ok,
        Wait,
    }

    #[test]
    fn down_after_n_failures_in_a_row_up_after_the_cooldown() {
        use Event::*;
        let md = MarkDown {
            after: 3,
            cooldown: Duration::from_millis(1000),
        };
        let p = Passive::default();
        // {description, event, then at t ms: down?}
        let table = [
            ("first failure", Fail(0), 1, false),
            ("second failure", Fail(1), 2, false),
            ("a success clears the count", Ok, 3, false),
            ("failure 1 of 3 again", Fail(10), 11, false),
            ("failure 2", Fail(20), 21, false),
            ("failure 3 marks it down", Fail(30), 31, true),
            ("still down before the cooldown ends", Wait, 1029, true),
            ("up when it ends", Wait, 1030, false),
            (
                "one more failure marks it down at once",
                Fail(1040),
                1041,
                true,
            ),
            ("a success brings it back", Ok, 1042, false),
        ];
        for (what, event, at, down) in table {
            match event {
                Fail(t) => {
                    p.fail(md, t);
                }
                Ok => p.ok(),
                Wait => {}
            }
            assert_eq!(p.is_down(at), down, "{what}");
        }
    }
}
