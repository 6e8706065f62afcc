//! The requests waiting for a sequence slot, shared fairly among the tenants they are for.
//!
//! One tenant's burst must not hold everyone else's requests back (a batch job queueing 200
//! requests in front of an interactive team's one), nor take every place in the queue. A
//! tenant's share is what it holds of the engine — its running sequences plus its waiting
//! requests — divided by its weight (1 unless configured).
//! - A free slot goes to the tenant whose turn it is (start-time fair queueing: each admission
//!   moves a tenant's virtual time on by 1 / weight, and a tenant coming back starts at the
//!   queue's, so idling banks no credit), then to the one running fewest sequences for its
//!   weight, then to the earliest arrival: one tenant alone is served first come, first served;
//!   several are admitted in proportion to their weights whatever their backlogs.
//! - When the queue is full, a request of a tenant that would still hold less than another
//!   tenant with waiting requests takes the place of that tenant's newest request, which is
//!   refused at once as it would have been had it come last (`engine_overloaded`). Decided when
//!   the request is submitted ([`Places`]), so the queue never holds more than its bound, and a
//!   place never changes hands back and forth: the giving tenant, with one more request, would
//!   hold more for its weight than the taker does.
//!
//! Requests without a tenant (the engine used directly) form one group.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{DISPLACED, WAITING};
use crate::GenerationEvent;

/// Whose request a waiting item is.
pub(crate) trait ForTenant {
    fn tenant(&self) -> Option<&Arc<str>>;
    /// Its tenant's weight (at least 1).
    fn weight(&self) -> u32 {
        1
    }
}

/// Waiting requests, in arrival order, with the fairness rules above.
pub(crate) struct FairQueue<T> {
    waiting: VecDeque<T>,
    /// Each tenant's virtual finish time: where its next turn starts (unless the queue's
    /// virtual time is past it).
    finish: HashMap<Option<Arc<str>>, f64>,
    /// The virtual start time of the last admission.
    now: f64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self { waiting: VecDeque::new(), finish: HashMap::new(), now: 0.0 }
    }
}

/// Beyond this many remembered tenants, only those waiting are kept: the others start their
/// next turn at the queue's virtual time (a credit of at most one turn).
const REMEMBERED_TENANTS: usize = 1024;

impl<T: ForTenant> FairQueue<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.waiting.push_back(item);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Keeps only the items `keep` accepts (in order).
    pub(crate) fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.waiting.retain(keep);
    }

    /// Takes the item that gets the next free slot, given how many sequences each tenant runs.
    pub(crate) fn next(&mut self, running: impl Fn(Option<&Arc<str>>) -> u64) -> Option<T> {
        let start = |item: &T| self.finish.get(&item.tenant().cloned()).copied().unwrap_or(0.0).max(self.now);
        // Whose turn it is first: ranking by slots held first would round the weights to whole
        // slots (two slots, weights 1 and 2: each tenant would keep one).
        #[allow(clippy::cast_precision_loss)]
        let rank = |item: &T| {
            let weight = f64::from(item.weight().max(1));
            (start(item), running(item.tenant()) as f64 / weight)
        };
        // Each ranked once; the first of the best (`min_by` keeps the first of equal keys):
        // arrival order breaks ties.
        let (index, _) = self.waiting.iter().map(rank).enumerate().min_by(|(_, a), (_, b)| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))?;
        let item = self.waiting.remove(index)?;
        let begins = start(&item);
        self.now = begins;
        if self.finish.len() >= REMEMBERED_TENANTS {
            let waiting: std::collections::HashSet<Option<&Arc<str>>> = self.waiting.iter().map(ForTenant::tenant).collect();
            self.finish.retain(|tenant, _| waiting.contains(&tenant.as_ref()));
        }
        self.finish.insert(item.tenant().cloned(), begins + 1.0 / f64::from(item.weight().max(1)));
        Some(item)
    }

    /// Every waiting item, in arrival order.
    pub(crate) fn take_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.waiting)
    }
}

/// What one tenant holds of the engine now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantShare {
    /// The tenant (`None`: requests submitted without one).
    pub tenant: Option<Arc<str>>,
    /// Its sequences running.
    pub running: u64,
    /// Its requests waiting for a slot.
    pub waiting: u64,
}

/// A waiting request as the submitting side sees it: enough to refuse it from there.
#[derive(Debug)]
pub(crate) struct Place {
    /// The job's state (`WAITING`, taken, left, displaced), shared with the job and its stream.
    pub(crate) state: Arc<AtomicU8>,
    pub(crate) events: UnboundedSender<GenerationEvent>,
    /// Its prompt tokens' estimate (counted in the queue's backlog while it waits).
    pub(crate) estimate: u64,
}

#[derive(Debug, Default)]
struct Holding {
    running: u64,
    /// Its waiting requests, oldest first, each with its arrival number.
    waiting: Vec<(u64, Place)>,
    /// Its weight, as its latest request gave it.
    weight: u32,
}

impl Holding {
    fn held(&self) -> u64 {
        self.running + self.waiting.len() as u64
    }

    fn weight(&self) -> u64 {
        u64::from(self.weight.max(1))
    }
}

/// What each tenant holds of the engine (running sequences, waiting places), kept by the
/// submitting side and the engine thread together under one lock.
#[derive(Debug, Default)]
pub(crate) struct Places {
    by_tenant: HashMap<Option<Arc<str>>, Holding>,
    arrivals: u64,
}

impl Places {
    /// A request of `tenant` (of `weight`) waits for a slot.
    pub(crate) fn join(&mut self, tenant: Option<&Arc<str>>, weight: u32, place: Place) {
        self.arrivals += 1;
        let holding = self.by_tenant.entry(tenant.cloned()).or_default();
        holding.weight = weight;
        holding.waiting.push((self.arrivals, place));
    }

    /// The waiting request with this `state` no longer waits (taken, left, or refused).
    pub(crate) fn leave(&mut self, tenant: Option<&Arc<str>>, state: &Arc<AtomicU8>) {
        let key = tenant.cloned();
        if let Some(holding) = self.by_tenant.get_mut(&key) {
            holding.waiting.retain(|(_, place)| !Arc::ptr_eq(&place.state, state));
            self.forget_if_idle(key);
        }
    }

    /// How many sequences `tenant` runs.
    pub(crate) fn running(&self, tenant: Option<&Arc<str>>) -> u64 {
        self.by_tenant.get(&tenant.cloned()).map_or(0, |h| h.running)
    }

    /// A sequence of `tenant` (of `weight`) started running.
    pub(crate) fn started(&mut self, tenant: Option<&Arc<str>>, weight: u32) {
        let holding = self.by_tenant.entry(tenant.cloned()).or_default();
        holding.weight = weight;
        holding.running += 1;
    }

    /// A sequence of `tenant` ended.
    pub(crate) fn ended(&mut self, tenant: Option<&Arc<str>>) {
        let key = tenant.cloned();
        if let Some(holding) = self.by_tenant.get_mut(&key) {
            holding.running = holding.running.saturating_sub(1);
            self.forget_if_idle(key);
        }
    }

    fn forget_if_idle(&mut self, key: Option<Arc<str>>) {
        if let Entry::Occupied(holding) = self.by_tenant.entry(key) {
            if holding.get().running == 0 && holding.get().waiting.is_empty() {
                holding.remove();
            }
        }
    }

    /// The queue is full and a request of `tenant` (of `weight`) arrives: the place it may take,
    /// if any — the newest waiting request of the tenant holding most for its weight, provided
    /// that tenant holds more for its weight than `tenant` will with this request (of two holding
    /// as much, the one whose newest came last). The place is marked displaced and no longer
    /// counted; the caller answers it.
    pub(crate) fn displace_for(&mut self, tenant: Option<&Arc<str>>, weight: u32) -> Option<Place> {
        let key = tenant.cloned();
        let own = self.by_tenant.get(&key).map_or(0, Holding::held) + 1;
        let own_weight = u64::from(weight.max(1));
        loop {
            // held / weight compared as held × the other's weight, in integers.
            let victim = self
                .by_tenant
                .iter()
                .filter(|(other, holding)| **other != key && holding.held() * own_weight > own * holding.weight())
                .filter_map(|(other, holding)| Some((holding.held(), holding.weight(), holding.waiting.last()?.0, other.clone())))
                .max_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)))
                .map(|(.., other)| other)?;
            let holding = self.by_tenant.get_mut(&victim)?;
            let (_, place) = holding.waiting.pop()?;
            self.forget_if_idle(victim);
            // Taken by the engine or left by its client meanwhile: not waiting any more.
            if place.state.compare_exchange(WAITING, DISPLACED, Relaxed, Relaxed).is_ok() {
                return Some(place);
            }
        }
    }

    /// How many waiting requests a new request of `tenant` (of `weight`) waits behind in the
    /// order slots are given: its tenant's own, and of each other tenant those that bring it up
    /// to as many running for its weight as `tenant` will have once this request runs (a slot
    /// goes to the tenant running fewest for its weight; of tenants running as many, counted as
    /// ahead).
    pub(crate) fn ahead_of(&self, tenant: Option<&Arc<str>>, weight: u32) -> u64 {
        let key = tenant.cloned();
        let (own_running, own_waiting) = self.by_tenant.get(&key).map_or((0, 0), |h| (h.running, h.waiting.len() as u64));
        let level = own_running + own_waiting + 1;
        let own_weight = u64::from(weight.max(1));
        let others: u64 = self
            .by_tenant
            .iter()
            .filter(|(other, _)| **other != key)
            .map(|(_, h)| (h.waiting.len() as u64).min((level * h.weight()).div_ceil(own_weight).saturating_sub(h.running)))
            .sum();
        own_waiting + others
    }

    /// Each tenant holding anything: its name (`None`: requests without one), running
    /// sequences and waiting requests, by name.
    pub(crate) fn holdings(&self) -> Vec<TenantShare> {
        let mut shares: Vec<TenantShare> = self
            .by_tenant
            .iter()
            .map(|(tenant, h)| TenantShare { tenant: tenant.clone(), running: h.running, waiting: h.waiting.len() as u64 })
            .collect();
        shares.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        shares
    }

    /// Waiting requests by tenant.
    #[cfg(test)]
    fn waiting(&self, tenant: &str) -> usize {
        self.by_tenant.get(&Some(Arc::from(tenant))).map_or(0, |h| h.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Req(Option<Arc<str>>, u32);

    impl ForTenant for Req {
        fn tenant(&self) -> Option<&Arc<str>> {
            self.0.as_ref()
        }
    }

    fn req(tenant: &str, n: u32) -> Req {
        Req((!tenant.is_empty()).then(|| Arc::from(tenant)), n)
    }

    fn running(counts: &[(&str, u64)]) -> impl Fn(Option<&Arc<str>>) -> u64 {
        let counts: HashMap<Option<Arc<str>>, u64> = counts.iter().map(|&(t, n)| ((!t.is_empty()).then(|| Arc::from(t)), n)).collect();
        move |tenant| counts.get(&tenant.cloned()).copied().unwrap_or(0)
    }

    #[test]
    fn one_tenant_is_served_in_arrival_order() {
        let mut queue = FairQueue::default();
        for n in 0..5 {
            queue.push(req("a", n));
        }
        let order: Vec<u32> = std::iter::from_fn(|| queue.next(running(&[("a", 1)]))).map(|r| r.1).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_late_tenant_is_not_held_behind_another_tenants_backlog() {
        let mut queue = FairQueue::default();
        for n in 0..6 {
            queue.push(req("batch", n));
        }
        queue.push(req("chat", 100));
        // "batch" runs one sequence already: the slot goes to "chat" though it came last.
        assert_eq!(queue.next(running(&[("batch", 1)])), Some(req("chat", 100)));
        assert_eq!(queue.next(running(&[("batch", 1), ("chat", 1)])), Some(req("batch", 0)));
    }

    #[test]
    fn tenants_with_as_many_running_take_turns() {
        let mut queue = FairQueue::default();
        for n in 0..3 {
            queue.push(req("a", n));
        }
        for n in 10..13 {
            queue.push(req("b", n));
        }
        queue.push(req("", 20));
        // Nothing running: turns go round the tenants, each in its own arrival order.
        let order: Vec<u32> = std::iter::from_fn(|| queue.next(running(&[]))).map(|r| r.1).collect();
        assert_eq!(order, [0, 10, 20, 1, 11, 2, 12]);
    }

    #[test]
    fn turns_come_first_and_running_breaks_their_ties() {
        let mut queue = FairQueue::default();
        queue.push(req("a", 0));
        queue.push(req("b", 1));
        // Neither has had a turn: "b" runs fewer, so it goes first though "a" came first.
        assert_eq!(queue.next(running(&[("a", 2), ("b", 0)])).map(|r| r.1), Some(1));
        // Now it is "a"'s turn, though "b" still runs fewer.
        queue.push(req("b", 2));
        assert_eq!(queue.next(running(&[("a", 2), ("b", 1)])).map(|r| r.1), Some(0));
    }

    fn t(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    /// Joins a waiting request of `name` (none if empty); returns its state and the receiver of its events.
    fn wait(places: &mut Places, name: &str) -> (Arc<AtomicU8>, tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>) {
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let tenant = (!name.is_empty()).then(|| t(name));
        places.join(tenant.as_ref(), 1, Place { state: Arc::clone(&state), events, estimate: 1 });
        (state, receiver)
    }

    #[test]
    fn a_tenant_holding_nothing_takes_the_place_of_one_running_and_waiting() {
        // One slot and one place, both the flooding tenant's: another tenant still gets in.
        let mut places = Places::default();
        places.started(Some(&t("flood")), 1);
        let (flood_waiting, _) = wait(&mut places, "flood");
        let taken = places.displace_for(Some(&t("chat")), 1).expect("chat holds nothing, flood two");
        assert!(Arc::ptr_eq(&taken.state, &flood_waiting));
        assert_eq!(flood_waiting.load(Relaxed), DISPLACED);
        let _chat = wait(&mut places, "chat");
        // Now each holds one: neither takes the other's place back, nor does a third tenant.
        assert!(places.displace_for(Some(&t("flood")), 1).is_none());
        assert!(places.displace_for(Some(&t("third")), 1).is_none());
        assert_eq!((places.waiting("flood"), places.waiting("chat")), (0, 1));
    }

    #[test]
    fn the_newest_request_of_the_tenant_holding_most_gives_its_place() {
        let mut places = Places::default();
        let a: Vec<_> = (0..3).map(|_| wait(&mut places, "a")).collect();
        let b: Vec<_> = (0..3).map(|_| wait(&mut places, "b")).collect();
        places.started(Some(&t("b")), 1);
        // b holds 4, a 3: b's newest goes.
        assert!(Arc::ptr_eq(&places.displace_for(None, 1).unwrap().state, &b[2].0));
        let _none = wait(&mut places, "");
        // 3 each: of two holding as many, the one whose newest came last (b's second came after a's third).
        assert!(Arc::ptr_eq(&places.displace_for(Some(&t("c")), 1).unwrap().state, &b[1].0));
        let _c = wait(&mut places, "c");
        assert!(Arc::ptr_eq(&places.displace_for(Some(&t("d")), 1).unwrap().state, &a[2].0));
        // a 2, b 2 (one running), c 1, None 1: d's second would hold 2, no more than any.
        let _d = wait(&mut places, "d");
        assert!(places.displace_for(Some(&t("d")), 1).is_none());
    }

    #[test]
    fn a_request_taken_or_left_meanwhile_is_not_displaced() {
        let mut places = Places::default();
        let first = wait(&mut places, "a");
        let second = wait(&mut places, "a");
        // The engine took the newest and started it (its leave() not yet called): the older one
        // goes instead.
        second.0.store(1, Relaxed);
        places.started(Some(&t("a")), 1);
        assert!(Arc::ptr_eq(&places.displace_for(Some(&t("b")), 1).unwrap().state, &first.0));
        assert!(places.displace_for(Some(&t("b")), 1).is_none(), "a waits no more");
    }

    #[test]
    fn holdings_list_each_tenant_by_name() {
        let mut places = Places::default();
        let _b = wait(&mut places, "b");
        places.started(Some(&t("a")), 1);
        let _a = wait(&mut places, "a");
        let _none = wait(&mut places, "");
        let holdings = places.holdings();
        let named: Vec<(Option<&str>, u64, u64)> = holdings.iter().map(|s| (s.tenant.as_deref(), s.running, s.waiting)).collect();
        assert_eq!(named, [(None, 0, 1), (Some("a"), 1, 1), (Some("b"), 0, 1)]);
    }

    #[test]
    fn requests_ahead_follow_the_order_slots_are_given_in() {
        let mut places = Places::default();
        let _flood: Vec<_> = (0..6).map(|_| wait(&mut places, "flood")).collect();
        places.started(Some(&t("flood")), 1);
        assert_eq!(places.ahead_of(Some(&t("chat")), 1), 0, "flood runs one already: chat's first goes first");
        let _chat = wait(&mut places, "chat");
        assert_eq!(places.ahead_of(Some(&t("chat")), 1), 1 + 1, "its own, and one of flood's to bring flood to two running");
        assert_eq!(places.ahead_of(Some(&t("flood")), 1), 6 + 1, "the flood's own six, and chat's one");
        assert_eq!(places.ahead_of(None, 1), 1, "chat's one (running none, as many as it), none of the flood's");
        // One tenant alone: first come, first served.
        let mut alone = Places::default();
        let _a: Vec<_> = (0..3).map(|_| wait(&mut alone, "a")).collect();
        assert_eq!(alone.ahead_of(Some(&t("a")), 1), 3);
    }

    #[test]
    fn slots_follow_the_weights() {
        // Two tenants with deep backlogs and one slot (nothing running at each choice): a tenant
        // of weight 2 gets two turns for the other's one.
        struct Named(Option<Arc<str>>, u32);
        impl ForTenant for Named {
            fn tenant(&self) -> Option<&Arc<str>> {
                self.0.as_ref()
            }
            fn weight(&self) -> u32 {
                self.1
            }
        }
        let mut queue = FairQueue::default();
        for _ in 0..6 {
            queue.push(Named(Some(t("heavy")), 2));
            queue.push(Named(Some(t("light")), 1));
        }
        let order: String = std::iter::from_fn(|| queue.next(running(&[]))).take(9).map(|n| if n.1 == 2 { 'H' } else { 'l' }).collect();
        assert_eq!(order.matches('H').count(), 6, "{order}");
        // Two slots, each tenant running one whenever a slot frees: still two turns for one
        // (ranking by slots held first would give each tenant one slot for good).
        let mut queue = FairQueue::default();
        for _ in 0..6 {
            queue.push(Named(Some(t("heavy")), 2));
            queue.push(Named(Some(t("light")), 1));
        }
        let each_runs_one = running(&[("heavy", 1), ("light", 1)]);
        let order: String = std::iter::from_fn(|| queue.next(&each_runs_one)).take(9).map(|n| if n.1 == 2 { 'H' } else { 'l' }).collect();
        assert_eq!(order.matches('H').count(), 6, "{order}");
    }

    #[test]
    fn places_and_the_requests_ahead_follow_the_weights() {
        let mut places = Places::default();
        let join = |places: &mut Places, name: &str, weight: u32| {
            let (events, _) = tokio::sync::mpsc::unbounded_channel();
            places.join(Some(&t(name)), weight, Place { state: Arc::new(AtomicU8::new(WAITING)), events, estimate: 1 });
        };
        for _ in 0..4 {
            join(&mut places, "batch", 1);
        }
        // Weight 3: a third request would hold 3 for weight 3 = 1 against batch's 4 then 3: it
        // takes places until it holds as much for its weight as batch.
        for held in 1..=3 {
            assert!(places.displace_for(Some(&t("chat")), 3).is_some(), "chat's request {held}");
            join(&mut places, "chat", 3);
        }
        // batch 1, chat 3 of weight 3: equal for their weights.
        assert!(places.displace_for(Some(&t("chat")), 3).is_none());
        assert!(places.displace_for(Some(&t("batch")), 1).is_none());
        // A new tenant of weight 1 waits behind batch's one and all of chat's three (weight 3
        // gets three turns for one).
        assert_eq!(places.ahead_of(Some(&t("new")), 1), 1 + 3);
    }

    #[test]
    fn tenants_holding_nothing_are_forgotten() {
        let mut places = Places::default();
        let (state, _) = wait(&mut places, "a");
        places.started(Some(&t("a")), 1);
        places.leave(Some(&t("a")), &state);
        assert_eq!(places.by_tenant.len(), 1, "still running one");
        places.ended(Some(&t("a")));
        assert!(places.by_tenant.is_empty());
        // Unknown tenants and states change nothing.
        places.ended(Some(&t("b")));
        places.leave(None, &state);
        assert!(places.by_tenant.is_empty());
    }

    #[test]
    fn turns_are_remembered_for_a_bounded_number_of_tenants() {
        let mut queue = FairQueue::default();
        for n in 0..REMEMBERED_TENANTS + 10 {
            queue.push(req(&format!("t{n}"), 0));
            assert!(queue.next(running(&[])).is_some());
        }
        assert!(queue.finish.len() <= REMEMBERED_TENANTS);
    }
}
