//! Virtual-time replay of one engine: the engine model's behaviour without
//! a clock, for its tests and for checking the live emulator against.

use super::engine::{Engine, Event, Request, SubmitError};

/// When one request arrived, got its first token and finished, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// The request's id.
    pub id: u64,
    /// Arrival.
    pub arrival: f64,
    /// First token (`None` for prefill-only requests).
    pub first: Option<f64>,
    /// Finish.
    pub done: f64,
}

/// Replays `arrivals` (time, request), sorted by time, on `engine`: each
/// request joins at its arrival, steps run back to back while there is
/// work, and the clock jumps to the next arrival when there is none. A
/// request the engine refuses fails the replay.
pub fn replay(
    engine: &mut Engine,
    arrivals: &[(f64, Request)],
) -> Result<Vec<Outcome>, SubmitError> {
    let mut out: Vec<Outcome> = Vec::with_capacity(arrivals.len());
    let mut index = std::collections::HashMap::new();
    let mut now = 0.0f64;
    let mut next = 0;
    while next < arrivals.len() || !engine.idle() {
        if engine.idle() && next < arrivals.len() {
            now = now.max(arrivals[next].0);
        }
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (at, r) = &arrivals[next];
            index.insert(r.id, out.len());
            out.push(Outcome {
                id: r.id,
                arrival: *at,
                first: None,
                done: f64::NAN,
            });
            engine.submit(r.clone())?;
            next += 1;
        }
        let Some(step) = engine.step() else {
            continue;
        };
        now += step.secs;
        for e in step.events {
            match e {
                Event::First(id) => {
                    if let Some(&i) = index.get(&id) {
                        out[i].first = Some(now);
                    }
                }
                Event::Done(id) => {
                    if let Some(&i) = index.get(&id) {
                        out[i].done = now;
                    }
                }
                Event::Token(_) | Event::Preempted(_) => {}
            }
        }
    }
    Ok(out)
}
