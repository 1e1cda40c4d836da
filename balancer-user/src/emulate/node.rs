//! A live node: the engine model driven by a timer.
//!
//! One task per node runs the engine's steps back to back: it plans a step
//! (holding the engine's lock only for the planning), sleeps the step's
//! duration divided by the node's speed, and then delivers the step's events
//! to each request's channel. With nothing to do it waits for a submission,
//! so an idle fleet costs no CPU, and a busy one costs one wake-up per step
//! per node, not per token per request.
//!
//! Steps are timed against a running deadline rather than "now", so the
//! node's clock does not drift when wake-ups come late; a node that falls
//! behind by more than one step starts counting from now again.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{
    engine::{Counters, Engine, Event, Policy, Request, SubmitError},
    profile::Class,
};

/// What a node reports in its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    /// Requests queued.
    pub waiting: usize,
    /// Requests in the batch.
    pub running: usize,
    /// KV blocks held, 0..1.
    pub kv_usage: f64,
    /// Engine totals.
    pub counters: Counters,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, found cached.
    pub prefix_hits: u64,
    /// Seconds spent in steps (the node was busy).
    pub busy_secs: f64,
}

struct Inner {
    engine: Engine,
    /// Each request's channel, by engine id.
    channels: HashMap<u64, mpsc::UnboundedSender<Event>>,
    busy_secs: f64,
}

/// A node serving requests in real time.
pub struct Node {
    inner: Mutex<Inner>,
    wake: Notify,
    next_id: AtomicU64,
    /// Speed factor as f64 bits: 0.25 runs four times slower.
    speed: AtomicU64,
}

impl Node {
    /// Starts a node of `class` on the current tokio runtime; it runs until
    /// the runtime ends.
    pub fn spawn(class: Class) -> Arc<Self> {
        let node = Arc::new(Self {
            inner: Mutex::new(Inner {
                engine: Engine::new(class),
                channels: HashMap::new(),
                busy_secs: 0.0,
            }),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
            speed: AtomicU64::new(1.0f64.to_bits()),
        });
        tokio::spawn(node.clone().run());
        node
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while planning cannot leave the engine half-changed in a
        // way later steps trip over more than a fresh start would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the speed factor (clamped to 0.001-1000).
    pub fn set_speed(&self, speed: f64) {
        let s = if speed.is_finite() {
            speed.clamp(0.001, 1000.0)
        } else {
            1.0
        };
        self.speed.store(s.to_bits(), Ordering::Relaxed);
    }

    /// The speed factor.
    pub fn speed(&self) -> f64 {
        f64::from_bits(self.speed.load(Ordering::Relaxed))
    }

    /// Sets the engine's scheduling policy.
    pub fn set_policy(&self, policy: Policy) {
        self.lock().engine.set_policy(policy);
    }

    /// The node's class.
    pub fn class(&self) -> Class {
        self.lock().engine.class().clone()
    }

    /// Queues a request; its events arrive on the returned channel, the last
    /// one [`Event::Done`]. `prompt_tokens`, `max_tokens`, `blocks` and
    /// `priority` are as in [`Request`]; the id is the node's.
    pub fn submit(
        &self,
        prompt_tokens: u32,
        max_tokens: u32,
        blocks: Vec<u64>,
        priority: i64,
    ) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut g = self.lock();
            g.engine.submit(Request {
                id,
                prompt_tokens,
                max_tokens,
                blocks,
                priority,
            })?;
            g.channels.insert(id, tx);
        }
        self.wake.notify_one();
        Ok(rx)
    }

    /// The metrics' figures now.
    pub fn gauges(&self) -> Gauges {
        let g = self.lock();
        let p = g.engine.prefix_cache();
        Gauges {
            waiting: g.engine.waiting(),
            running: g.engine.running(),
            kv_usage: g.engine.kv_usage(),
            counters: g.engine.counters(),
            prefix_queries: p.queried_tokens,
            prefix_hits: p.hit_tokens,
            busy_secs: g.busy_secs,
        }
    }

    async fn run(self: Arc<Self>) {
        let mut deadline = Instant::now();
        loop {
            let step = self.lock().engine.step();
            let Some(step) = step else {
                self.wake.notified().await;
                deadline = Instant::now();
                continue;
            };
            let secs = step.secs / self.speed();
            let now = Instant::now();
            if deadline + Duration::from_secs_f64(secs) < now {
                deadline = now;
            }
            deadline += Duration::from_secs_f64(secs);
            tokio::time::sleep_until(deadline).await;
            let mut g = self.lock();
            g.busy_secs += step.secs;
            for e in step.events {
                let id = match e {
                    Event::First(id) | Event::Token(id) | Event::Preempted(id) => id,
                    Event::Done(id) => {
                        if let Some(tx) = g.channels.remove(&id) {
                            let _ = tx.send(e);
                        }
                        continue;
                    }
                };
                // A client that went away leaves a closed channel; its
                // request still runs to the end (vLLM would abort it: the
                // bench's clients never leave early).
                if let Some(tx) = g.channels.get(&id) {
                    let _ = tx.send(e);
                }
            }
        }
    }
}
