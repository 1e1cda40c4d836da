//! The cache's eviction and admission policy: frequency, recency, cost to
//! recompute and size, in O(1) per operation.
//!
//! The layout is W-TinyLFU's: a **window** (LRU) where every new entry lands,
//! and a **main** space split into **probation** and **protected** (a
//! segmented LRU: an entry hit on probation is promoted, the protected
//! segment's oldest fall back to probation). When the window overflows, its
//! oldest entry becomes a *candidate* for main; if main has no room, the
//! candidate is weighed against the *victims* it would push out:
//!
//! `admit ⇔ (f(candidate) − 1) × cost(candidate) > Σ f(victim) × cost(victim)`
//!
//! where `f` is the access frequency from a count-min sketch of 4-bit
//! counters (halved every `10 ×` capacity accesses, at least 1,280, so
//! history fades; at least 16,384 counters, so the keys a small cache turns
//! away do not blur the comparison) and
//! `cost` what a miss costs to recompute (the backend's measured time). The
//! candidate's own miss is not counted: it must have been asked for more
//! often than its victims *before* it came in (otherwise every key of a loop
//! larger than the cache beats the key the loop visits next, and the cache
//! never hits). When one victim frees enough room it is the entry of least
//! `f × cost / size` among probation's 8 oldest; otherwise victims are taken
//! oldest first. Per byte this is GreedyDual-Size-Frequency's utility: an
//! entry twice as large must be worth twice as much, so one large, cheap,
//! rarely used response cannot displace many small, expensive, popular ones,
//! and a scan of one-off requests cannot flush the working set.
//!
//! The window's share of the budget adapts by **miniature simulation**
//! (Waldspurger et al., 2017): four shadow copies of this policy, with
//! windows of 1%, 20%, 50% and 80%, see a hash-sampled sixteenth of the keys
//! (all of them below 4096 expected entries) at a sixteenth of the budget.
//! Their cost-weighted hits decay by 1% a period (the shadows' size in
//! accesses), and after every period the real window moves to the best
//! one's share if that one missed at least 2% less than the current one
//! (or hit 10% more, for workloads where hits are rare):
//! a switch empties what the other layout built, so near-ties and short
//! phases must not flip it (on a zig-zag trace, flipping with every phase
//! cost a third of the hits every fixed share gets). Recency-heavy workloads
//! end up with a large window (close to LRU), frequency-heavy ones with a
//! small one (close to LFU). The shadows
//! keep keys only, at a sixteenth of the size: about 1/4 of the real
//! policy's bookkeeping (for a policy, i.e. a store shard, below 4096
//! expected entries they are full-size copies, small in absolute terms),
//! plus an 8 KiB sketch each.
//!
//! Entries live in a slab of nodes linked into the three lists, with a hash
//! map from key to node: lookup, promotion, insertion and each eviction are
//! O(1) (times the shadows, for sampled keys); evicting for one large entry
//! is O(victims).
//!
//! This file holds the lists, admission and eviction; `sketch.rs` the
//! frequency sketch, `shadow.rs` the window's adaptation, `tests.rs` the
//! unit tests.

mod shadow;
mod sketch;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
};

use self::shadow::{SHARES, Shadow};
pub use self::sketch::Sketch;

const NIL: u32 = u32::MAX;

/// Which list a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Q {
    Window = 0,
    Probation = 1,
    Protected = 2,
}

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    hash: u64,
    size: u64,
    cost: f64,
    q: Q,
    prev: u32,
    next: u32,
}

/// A doubly linked list over the slab; `head` is the oldest.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    bytes: u64,
}

impl List {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        bytes: 0,
    };
}

/// What [`Policy::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<K> {
    /// Whether the new entry is now cached.
    pub admitted: bool,
    /// Entries pushed out (drop their values). May include the new key when
    /// it was admitted into the window and then lost admission to main.
    pub evicted: Vec<K>,
}

/// The largest cost an entry is given (a day of backend time): sums of
/// costs must stay finite for the comparisons to mean anything.
const MAX_COST: f64 = 86_400.0;
/// Probation entries weighed when one victim is enough.
const SAMPLE: usize = 8;
/// The protected segment's share of main.
const PROTECTED: f64 = 0.8;

/// The policy. It tracks keys, sizes and costs; the caller keeps the values.
#[derive(Debug, Clone)]
pub struct Policy<K: Hash + Eq + Clone> {
    budget: u64,
    window_max: u64,
    map: HashMap<K, u32>,
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    lists: [List; 3],
    sketch: Sketch,
    hasher: std::collections::hash_map::RandomState,
    shadow: Option<Box<Shadow<K>>>,
}

impl<K: Hash + Eq + Clone> Policy<K> {
    /// A policy for `budget` bytes, sized for about `expected_items` entries.
    pub fn new(budget: u64, expected_items: usize) -> Self {
        let mut p = Self::fixed(budget, expected_items, SHARES[0]);
        p.shadow = Some(Box::new(Shadow::new(budget, expected_items)));
        p
    }

    /// A policy whose window keeps `share` of the budget.
    fn fixed(budget: u64, expected_items: usize, share: f64) -> Self {
        let items = expected_items.max(16);
        Self {
            budget,
            window_max: ((budget as f64 * share) as u64).max(1),
            map: HashMap::with_capacity(items),
            nodes: Vec::with_capacity(items),
            free: Vec::new(),
            lists: [List::EMPTY; 3],
            sketch: Sketch::new(items),
            hasher: Default::default(),
            shadow: None,
        }
    }

    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.lists.iter().map(|l| l.bytes).sum()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `k` is held (no side effects).
    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// The window's current share of the budget.
    pub fn window_share(&self) -> f64 {
        self.window_max as f64 / self.budget.max(1) as f64
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, q, size) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.q, n.size)
        };
        let l = &mut self.lists[q as usize];
        if prev == NIL {
            l.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        let l = &mut self.lists[q as usize];
        if next == NIL {
            l.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.lists[q as usize].bytes -= size;
    }

    /// Appends node `i` as the newest of `q`.
    fn push(&mut self, i: u32, q: Q) {
        let tail = self.lists[q as usize].tail;
        {
            let n = &mut self.nodes[i as usize];
            n.q = q;
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.lists[q as usize].head = i;
        } else {
            self.nodes[tail as usize].next = i;
        }
        let l = &mut self.lists[q as usize];
        l.tail = i;
        l.bytes += self.nodes[i as usize].size;
    }

    fn drop_node(&mut self, i: u32, evicted: &mut Vec<K>) {
        self.unlink(i);
        let k = self.nodes[i as usize].key.clone();
        self.map.remove(&k);
        self.free.push(i);
        evicted.push(k);
    }

    fn value(&self, i: u32) -> f64 {
        let n = &self.nodes[i as usize];
        self.sketch.estimate(n.hash) as f64 * n.cost
    }

    /// Among probation's few oldest entries, the one of least value per
    /// byte that alone frees `need` bytes (ties: the oldest).
    fn cheapest_old(&self, need: u64) -> Option<u32> {
        let mut best: Option<(f64, u32)> = None;
        let mut v = self.lists[Q::Probation as usize].head;
        for _ in 0..SAMPLE {
            if v == NIL {
                break;
            }
            let n = &self.nodes[v as usize];
            if n.size >= need {
                let d = self.value(v) / n.size as f64;
                if best.is_none_or(|(b, _)| d < b) {
                    best = Some((d, v));
                }
            }
            v = n.next;
        }
        best.map(|(_, v)| v)
    }

    /// A candidate's value counts the accesses before its latest one: it
    /// must have been asked for more often than its victims *before* the
    /// miss that brought it in. (Counting that miss too lets every key of a
    /// loop larger than the cache beat the key the loop visits next, and the
    /// cache never hits.)
    fn candidate_value(&self, i: u32) -> f64 {
        let n = &self.nodes[i as usize];
        (self.sketch.estimate(n.hash) as f64 - 1.0).max(0.0) * n.cost
    }

    /// Records an access; returns whether `k` is held (a hit).
    pub fn touch(&mut self, k: &K) -> bool {
        let h = self.hash(k);
        self.sketch.increment(h);
        let known = self.map.get(k).map(|&i| {
            let n = &self.nodes[i as usize];
            (n.size, n.cost)
        });
        if let Some(share) = self.shadow.as_mut().and_then(|sh| sh.access(k, h, known)) {
            self.window_max = ((self.budget as f64 * share) as u64).max(1);
        }
        let Some(&i) = self.map.get(k) else {
            return false;
        };
        let q = self.nodes[i as usize].q;
        self.unlink(i);
        match q {
            Q::Window => self.push(i, Q::Window),
            Q::Probation | Q::Protected => {
                self.push(i, Q::Protected);
                self.demote_protected();
            }
        }
        true
    }

    /// The cost recorded for `k`, if held.
    fn cost_of(&self, k: &K) -> Option<f64> {
        self.map.get(k).map(|&i| self.nodes[i as usize].cost)
    }

    fn main_budget(&self) -> u64 {
        self.budget.saturating_sub(self.window_max)
    }

    fn demote_protected(&mut self) {
        let max = (self.main_budget() as f64 * PROTECTED) as u64;
        while self.lists[Q::Protected as usize].bytes > max {
            let i = self.lists[Q::Protected as usize].head;
            if i == NIL {
                break;
            }
            self.unlink(i);
            self.push(i, Q::Probation);
        }
    }

    /// Removes `k`; returns whether it was held.
    pub fn remove(&mut self, k: &K) -> bool {
        let Some(i) = self.map.remove(k) else {
            return false;
        };
        self.unlink(i);
        self.free.push(i);
        true
    }

    /// Offers a new entry (after its miss was [`touch`](Self::touch)ed).
    pub fn insert(&mut self, k: K, size: u64, cost: f64) -> Admission<K> {
        // Costs come from measured times and Redis: keep sums finite.
        let cost = if cost.is_nan() {
            f64::MIN_POSITIVE
        } else {
            cost.clamp(f64::MIN_POSITIVE, MAX_COST)
        };
        let mut evicted = Vec::new();
        self.remove(&k);
        if size > self.budget {
            return Admission {
                admitted: false,
                evicted,
            };
        }
        let hash = self.hash(&k);
        let node = Node {
            hash,
            key: k.clone(),
            size,
            cost,
            q: Q::Window,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.map.insert(k.clone(), i);
        self.push(i, Q::Window);
        self.evict(&mut evicted);
        if let Some(sh) = self.shadow.as_mut() {
            sh.insert(&k, hash, size, cost);
        }
        Admission {
            admitted: self.map.contains_key(&k),
            evicted,
        }
    }

    /// Moves window overflow into main through admission, then trims main
    /// until the whole budget holds.
    fn evict(&mut self, evicted: &mut Vec<K>) {
        while self.lists[Q::Window as usize].bytes > self.window_max {
            let cand = self.lists[Q::Window as usize].head;
            if cand == NIL {
                break;
            }
            let need = self.used().saturating_sub(self.budget);
            if need == 0 {
                self.unlink(cand);
                self.push(cand, Q::Probation);
                continue;
            }
            // Victims: probation's oldest, then protected's, until `need` bytes.
            let mut victims = Vec::new();
            let (mut freed, mut worth) = (0u64, 0.0);
            if let Some(v) = self.cheapest_old(need) {
                victims.push(v);
                freed = self.nodes[v as usize].size;
                worth = self.value(v);
            }
            for q in [Q::Probation, Q::Protected] {
                let mut v = self.lists[q as usize].head;
                while v != NIL && freed < need {
                    freed += self.nodes[v as usize].size;
                    worth += self.value(v);
                    victims.push(v);
                    v = self.nodes[v as usize].next;
                }
            }
            if freed >= need && self.candidate_value(cand) > worth {
                for v in victims {
                    self.drop_node(v, evicted);
                }
                self.unlink(cand);
                self.push(cand, Q::Probation);
            } else {
                self.drop_node(cand, evicted);
            }
        }
        // A grown window can leave main over its share: trim main's oldest.
        while self.used() > self.budget {
            let v = [Q::Probation, Q::Protected, Q::Window]
                .iter()
                .map(|q| self.lists[*q as usize].head)
                .find(|h| *h != NIL);
            match v {
                Some(v) => self.drop_node(v, evicted),
                None => break,
            }
        }
    }
}
