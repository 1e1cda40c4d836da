//! What the route's cost model sees of each request: its [`Work`], parsed
//! once from the body when the route picks `aware`, and the [`Dispatch`]
//! that follows the request to its backend and learns from its answer.

use std::sync::{Arc, atomic::Ordering};

use super::Route;
use crate::{
    cache::pick::{Member, Pick},
    route::{
        cost::{Accuracy, Dispatch, Heaviness, Work},
        prefix, request,
        tokens::Tokens,
    },
};

/// A route's cost-model state.
#[derive(Debug, Default)]
pub(super) struct Placement {
    /// Bytes to tokens, per model.
    tokens: Tokens,
    /// The route's typical request size.
    heaviness: Heaviness,
    /// Its predictions against what happened.
    pub(super) accuracy: Arc<Accuracy>,
}

impl Route {
    /// The request's cost, when the route places by cost and the body is a
    /// JSON object.
    pub(super) fn work(&self, body: &[u8]) -> Option<Work> {
        if self.cfg.pick != Pick::Aware {
            return None;
        }
        let shape = request::parse(body)?;
        let t = &self.placement.tokens;
        let mut w = Work {
            model: shape.model.clone(),
            prompt_tokens: t.prompt_tokens(&shape.model, shape.prompt_bytes),
            output_tokens: t.output_tokens(&shape.model, shape.max_tokens),
            prompt_bytes: shape.prompt_bytes,
            blocks: prefix::blocks(&shape.text),
            stream: shape.stream,
            heavy: false,
        };
        w.heavy = self.placement.heaviness.judge(&w);
        Some(w)
    }

    /// Follows `work`, just counted in flight on `m`.
    pub(super) fn dispatch(&self, m: &Member, work: &Work) -> Dispatch {
        // The pick counted this request already: predict as it saw it.
        let before = m.in_flight.load(Ordering::Relaxed).saturating_sub(1);
        let p = m.cost.predict(work, before);
        m.cost.dispatch(work, p, self.placement.accuracy.clone())
    }

    /// The cost model's mean absolute percentage error so far, on time to
    /// first token and end to end: (predictions compared, MAPE).
    pub fn prediction_error(&self) -> [(u64, Option<f64>); 2] {
        let a = &self.placement.accuracy;
        [a.ttft.mape(), a.e2e.mape()]
    }
}
