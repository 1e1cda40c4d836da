//! The engine model: continuous batching with a KV budget, chunked prefill,
//! prefix caching and preemption, after vLLM's V1 scheduler.
//!
//! The model has no clock. [`Engine::step`] decides what one step computes
//! and says how long the step takes on the node's [`Class`]; the caller
//! waits that long (a timer, or virtual time in [`super::sim`]) and then
//! delivers the step's events. Per step:
//!
//! 1. every running sequence past its prefill decodes one token. One that
//!    needs a new KV block when none is free preempts the most recently
//!    admitted sequence (possibly itself): its blocks are freed and it goes
//!    back to the head of the queue, to recompute prompt and output so far,
//!    as vLLM does;
//! 2. prefill chunks fill the rest of the step's token budget: first the
//!    sequences already prefilling, then queued ones admitted in order while
//!    a batch slot and KV blocks for their whole context are free. Leading
//!    prompt blocks found in the prefix cache are not computed again (the
//!    last prompt token always is, for its logits);
//! 3. a sequence whose prefill completes in a step emits its first token at
//!    the end of that step.
//!
//! Blocks no running sequence holds hold the prefix cache; it shrinks as
//! sequences take blocks.
//!
//! Under [`Policy::Priority`] (vLLM's `--scheduling-policy priority`) the
//! queue is ordered by each request's `priority` (lower first, arrival
//! order within one), and a preemption takes the running sequence of the
//! lowest priority (the most recently admitted among equals) instead of
//! simply the newest.

use std::collections::VecDeque;

use super::{prefix::PrefixCache, profile::Class};

/// One request as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Prompt length, tokens (at least 1).
    pub prompt_tokens: u32,
    /// Tokens to generate; 0 for a prefill-only request (embeddings, and
    /// the non-LLM models, whose work is counted in tokens).
    pub max_tokens: u32,
    /// The prompt's full blocks, chained ([`super::prefix::chain`]).
    pub blocks: Vec<u64>,
    /// vLLM's `priority`: lower runs first under [`Policy::Priority`].
    pub priority: i64,
}

/// How queued requests are ordered, as vLLM's `--scheduling-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// First come, first served; a request with a non-zero priority is
    /// refused, as vLLM refuses it.
    #[default]
    Fcfs,
    /// By priority, then arrival.
    Priority,
}

/// What happened to a request at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Its first token (the end of its prefill).
    First(u64),
    /// One more token.
    Token(u64),
    /// It finished: all tokens generated, or its prefill done (0 tokens).
    Done(u64),
    /// It lost its KV blocks and waits to recompute them.
    Preempted(u64),
}

/// One step: how long it takes and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Duration, seconds.
    pub secs: f64,
    /// Sequences that decoded a token.
    pub decoded: u32,
    /// Prompt (or recomputed) tokens computed.
    pub prefilled: u32,
    /// Events, delivered at the end of the step.
    pub events: Vec<Event>,
}

/// Why a request is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Its context can never fit this node's KV cache.
    #[error("{tokens} tokens of context do not fit a KV cache of {kv_tokens} tokens")]
    TooLong {
        /// Prompt plus output tokens.
        tokens: u64,
        /// The node's KV capacity.
        kv_tokens: u32,
    },
    /// An empty prompt.
    #[error("the prompt is empty")]
    Empty,
    /// A priority under first-come-first-served scheduling.
    #[error(
        "got priority {0} but priority scheduling is not enabled (--scheduling-policy priority)"
    )]
    PriorityOff(i64),
}

/// Running totals, as vLLM's counters report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Prompt tokens computed, recomputation included.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Requests finished.
    pub finished: u64,
    /// Preemptions.
    pub preemptions: u64,
}

#[derive(Debug)]
struct Seq {
    req: Request,
    /// Tokens generated so far (kept across preemption).
    generated: u32,
    /// Context tokens to compute before decoding (re)starts.
    target: u32,
    /// Of those, computed (or found cached).
    computed: u32,
    /// KV blocks held.
    held: u32,
}

impl Seq {
    fn context(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }

    fn prefilling(&self) -> bool {
        self.computed < self.target
    }
}

/// One node's engine.
#[derive(Debug)]
pub struct Engine {
    class: Class,
    policy: Policy,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    used_blocks: u32,
    cache: PrefixCache,
    counters: Counters,
}

impl Engine {
    /// An idle engine on `class` (validated).
    pub fn new(class: Class) -> Self {
        Self {
            class,
            policy: Policy::Fcfs,
            waiting: VecDeque::new(),
            running: Vec::new(),
            used_blocks: 0,
            cache: PrefixCache::default(),
            counters: Counters::default(),
        }
    }

    /// The node's class.
    pub fn class(&self) -> &Class {
        &self.class
    }

    /// Sets the scheduling policy (for requests queued from now on).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Queues a request.
    pub fn submit(&mut self, req: Request) -> Result<(), SubmitError> {
        if req.prompt_tokens == 0 {
            return Err(SubmitError::Empty);
        }
        if self.policy == Policy::Fcfs && req.priority != 0 {
            return Err(SubmitError::PriorityOff(req.priority));
        }
        let tokens = req.prompt_tokens as u64 + req.max_tokens as u64;
        if self.blocks_for(tokens) > self.class.kv_blocks() as u64 {
            return Err(SubmitError::TooLong {
                tokens,
                kv_tokens: self.class.kv_tokens,
            });
        }
        let s = Seq {
            req,
            generated: 0,
            target: 0,
            computed: 0,
            held: 0,
        };
        // Behind every request of the same or a more urgent priority.
        let at = match self.policy {
            Policy::Fcfs => self.waiting.len(),
            Policy::Priority => self
                .waiting
                .iter()
                .position(|w| w.req.priority > s.req.priority)
                .unwrap_or(self.waiting.len()),
        };
        self.waiting.insert(at, s);
        Ok(())
    }

    /// The running sequence a preemption takes: the newest, or under
    /// [`Policy::Priority`] the newest of the least urgent among those not
    /// finished (one that just decoded its last token waits for `retire`
    /// at the end of the step and must not be sent back to the queue).
    fn victim(&self) -> usize {
        let last = self.running.len().saturating_sub(1);
        match self.policy {
            Policy::Fcfs => last,
            Policy::Priority => (0..self.running.len())
                .filter(|&i| {
                    let s = &self.running[i];
                    s.prefilling() || s.generated < s.req.max_tokens
                })
                .max_by_key(|&i| (self.running[i].req.priority, i))
                .unwrap_or(last),
        }
    }

    fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.class.block_tokens as u64)
    }

    fn free_blocks(&self) -> u32 {
        self.class.kv_blocks().saturating_sub(self.used_blocks)
    }

    /// Requests queued.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in the batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Fraction of KV blocks running sequences hold, 0..1.
    pub fn kv_usage(&self) -> f64 {
        self.used_blocks as f64 / self.class.kv_blocks().max(1) as f64
    }

    /// Totals so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The prefix cache (for its hit counters).
    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.cache
    }

    /// Whether there is nothing to do.
    pub fn idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Plans and applies one step; `None` when idle.
    pub fn step(&mut self) -> Option<Step> {
        if self.idle() {
            return None;
        }
        let mut events = Vec::new();
        let mut budget = self.class.max_step_tokens;
        let decoded = self.decode(&mut budget, &mut events);
        let mut prefilled = self.continue_prefills(&mut budget, &mut events);
        prefilled += self.admit(&mut budget, &mut events);
        self.retire(&mut events);
        self.cache.shrink_to(self.free_blocks() as usize);
        Some(Step {
            secs: self.class.step_secs(decoded, prefilled),
            decoded,
            prefilled,
            events,
        })
    }

    /// Step 1: one token for every sequence past its prefill, preempting
    /// ([`Engine::victim`]) when a token needs a block and none is free.
    fn decode(&mut self, budget: &mut u32, events: &mut Vec<Event>) -> u32 {
        let bt = self.class.block_tokens;
        let mut decoded = 0;
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let s = &self.running[i];
            if s.prefilling() || s.generated >= s.req.max_tokens {
                i += 1;
                continue;
            }
            let need = (s.context() + 1).div_ceil(bt);
            if need > s.held {
                let mut lost = false;
                while self.free_blocks() == 0 {
                    let v = self.victim();
                    self.preempt(v, events);
                    if v == i {
                        lost = true;
                        break;
                    }
                    if v < i {
                        i -= 1;
                    }
                }
                // Sequence i gave up its own blocks: the one now at i is next.
                if lost {
                    continue;
                }
                self.used_blocks += 1;
                self.running[i].held += 1;
            }
            let s = &mut self.running[i];
            s.generated += 1;
            self.counters.generation_tokens += 1;
            events.push(Event::Token(s.req.id));
            decoded += 1;
            *budget -= 1;
            i += 1;
        }
        decoded
    }

    fn preempt(&mut self, index: usize, events: &mut Vec<Event>) {
        let mut s = self.running.remove(index);
        self.used_blocks -= s.held;
        s.held = 0;
        s.computed = 0;
        s.target = 0;
        self.counters.preemptions += 1;
        events.push(Event::Preempted(s.req.id));
        // Ahead of everything as urgent or less: it was admitted before them.
        let at = match self.policy {
            Policy::Fcfs => 0,
            Policy::Priority => self
                .waiting
                .iter()
                .position(|w| w.req.priority >= s.req.priority)
                .unwrap_or(self.waiting.len()),
        };
        self.waiting.insert(at, s);
    }

    /// Step 2a: the next chunk of prefills already under way.
    fn continue_prefills(&mut self, budget: &mut u32, events: &mut Vec<Event>) -> u32 {
        let mut done = 0;
        for i in 0..self.running.len() {
            if *budget == 0 {
                break;
            }
            if self.running[i].prefilling() {
                done += self.prefill_chunk(i, budget, events);
            }
        }
        done
    }

    /// Step 2b: admits queued sequences, in order, while one fits.
    fn admit(&mut self, budget: &mut u32, events: &mut Vec<Event>) -> u32 {
        let bt = self.class.block_tokens;
        let mut done = 0;
        while *budget > 0 && self.running.len() < self.class.max_seqs as usize {
            let Some(s) = self.waiting.front() else {
                break;
            };
            // Room for the whole context and the next token: a sequence
            // admitted never waits on memory mid-prefill.
            let need = (s.context() + 1).div_ceil(bt);
            if need > self.free_blocks() {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            s.target = s.context();
            let cached = self
                .cache
                .lookup(&s.req.blocks, bt, s.req.prompt_tokens)
                .saturating_mul(bt);
            s.computed = cached.min(s.target - 1);
            s.held = need;
            self.used_blocks += need;
            self.running.push(s);
            let i = self.running.len() - 1;
            done += self.prefill_chunk(i, budget, events);
        }
        done
    }

    /// Computes as much of sequence `i`'s prefill as the budget allows; at
    /// its end, the sequence's prompt blocks join the cache and it emits a
    /// token (its first, unless it is recomputing after a preemption).
    fn prefill_chunk(&mut self, i: usize, budget: &mut u32, events: &mut Vec<Event>) -> u32 {
        let s = &mut self.running[i];
        let chunk = (s.target - s.computed).min(*budget);
        s.computed += chunk;
        *budget -= chunk;
        self.counters.prompt_tokens += chunk as u64;
        if s.prefilling() {
            return chunk;
        }
        let id = s.req.id;
        if s.req.max_tokens > 0 {
            let first = s.generated == 0;
            s.generated += 1;
            self.counters.generation_tokens += 1;
            events.push(if first {
                Event::First(id)
            } else {
                Event::Token(id)
            });
        }
        let blocks = std::mem::take(&mut s.req.blocks);
        self.cache.insert(&blocks);
        self.running[i].req.blocks = blocks;
        chunk
    }

    /// Removes finished sequences, freeing their blocks.
    fn retire(&mut self, events: &mut Vec<Event>) {
        let mut freed = 0;
        let mut finished = 0;
        self.running.retain(|s| {
            let done = !s.prefilling() && s.generated >= s.req.max_tokens;
            if done {
                freed += s.held;
                finished += 1;
                events.push(Event::Done(s.req.id));
            }
            !done
        });
        self.used_blocks -= freed;
        self.counters.finished += finished;
    }
}
