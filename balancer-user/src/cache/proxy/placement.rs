//! What the route's cost model sees of each request: its [`Work`], parsed
//! once from the body when the route picks `aware`, and the [`Dispatch`]
//! that follows the request to its backend and learns from its answer.

use std::sync::{Arc, atomic::Ordering};

use super::Route;
use crate::{
    cache::pick::{Member, Pick, aware::Choice},
    route::{
        cost::{Accuracy, Dispatch, Heaviness, Work},
        explain::{Placement as Placed, Recent},
        request,
        tokens::Tokens,
    },
};

/// A route's cost-model state.
#[derive(Debug, Default)]
pub(super) struct Placement {
    /// Bytes to tokens, per model, learned from the answers' `usage`.
    tokens: Arc<Tokens>,
    /// The route's typical request size.
    heaviness: Heaviness,
    /// Its predictions against what happened.
    pub(super) accuracy: Arc<Accuracy>,
    /// Its last placements, for `route explain`.
    recent: Recent,
}

impl Route {
    /// The request's cost, when the route places by cost and the body is a
    /// JSON object.
    pub(super) fn work(&self, body: &[u8]) -> Option<Work> {
        if self.cfg.pick != Pick::Aware {
            return None;
        }
        let shape = request::parse(body)?;
        Some(Work::of(
            &shape,
            &self.placement.tokens,
            &self.placement.heaviness,
        ))
    }

    /// Follows `work`, just counted in flight on `m`; `choice` is the
    /// `aware` pick's, kept for `route explain`.
    pub(super) fn dispatch(&self, m: &Member, work: &Work, choice: Option<&Choice>) -> Dispatch {
        // The pick counted this request already: predict as it saw it.
        let before = m.in_flight.load(Ordering::Relaxed).saturating_sub(1);
        let p = choice.map_or_else(|| m.cost.predict(work, before), |c| c.prediction);
        let mut d = m.cost.dispatch(work, p, self.placement.accuracy.clone());
        d.tap_usage(
            self.placement.tokens.clone(),
            &work.model,
            work.prompt_bytes,
        );
        if let Some(c) = choice {
            d.explain(self.placement.recent.record(Placed {
                at_ms: 0,
                backend: m.addr.to_string(),
                reason: c.reason.label().into(),
                model: work.model.chars().take(128).collect(),
                heavy: work.heavy,
                candidates: c.candidates as u32,
                prompt_tokens: work.prompt_tokens,
                uncached_tokens: p.uncached_tokens,
                matched_blocks: p.matched_blocks as u32,
                prefill_ahead: p.prefill_ahead,
                predicted_ttft_s: p.ttft_s,
                predicted_e2e_s: p.e2e_s,
                actual_ttft_s: None,
            }));
        }
        d
    }

    /// The route's last placements by `aware`, newest first.
    pub fn placements(&self) -> Vec<Placed> {
        self.placement.recent.snapshot()
    }

    /// The cost model's mean absolute percentage error so far, on time to
    /// first token and end to end: (predictions compared, MAPE).
    pub fn prediction_error(&self) -> [(u64, Option<f64>); 2] {
        let a = &self.placement.accuracy;
        [a.ttft.mape(), a.e2e.mape()]
    }
}
