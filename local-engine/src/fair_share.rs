//! The requests waiting for a sequence slot, shared fairly among the tenants they are for.
//!
//! One tenant's burst must not hold everyone else's requests back (a batch job queueing 200
//! requests in front of an interactive team's one), nor take every place in the queue. So:
//! - a free slot goes to the waiting request whose tenant has the fewest sequences running, then
//!   to the tenant admitted least recently, then to the earliest arrival: one tenant alone is
//!   served first come, first served; several share the slots evenly whatever their backlogs;
//! - when the queue is full, a request of a tenant holding fewer waiting places than another
//!   takes the place of that tenant's newest request, which is refused as it would have been had
//!   it come last (`engine_overloaded`). Places are split evenly among the tenants that want them.
//!
//! Requests without a tenant (the engine used directly) form one group.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Whose request a waiting item is.
pub(crate) trait ForTenant {
    fn tenant(&self) -> Option<&Arc<str>>;
}

/// Waiting requests, in arrival order, with the fairness rules above.
pub(crate) struct FairQueue<T> {
    waiting: VecDeque<T>,
    /// When each tenant was last given a slot (a count of admissions).
    last_admitted: HashMap<Option<Arc<str>>, u64>,
    admissions: u64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self { waiting: VecDeque::new(), last_admitted: HashMap::new(), admissions: 0 }
    }
}

/// Forgotten admission times: a tenant not seen for this many admissions counts as never admitted.
const REMEMBERED_TENANTS: usize = 1024;

impl<T: ForTenant> FairQueue<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.waiting.push_back(item);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Keeps only the items `keep` accepts (in order); returns how many went.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(keep);
        before - self.waiting.len()
    }

    /// Takes the item that gets the next free slot, given how many sequences each tenant runs.
    pub(crate) fn next(&mut self, running: &HashMap<Option<Arc<str>>, usize>) -> Option<T> {
        let rank = |item: &T| {
            let tenant = item.tenant().cloned();
            let last = self.last_admitted.get(&tenant).copied().unwrap_or(0);
            (running.get(&tenant).copied().unwrap_or(0), last)
        };
        // The first of the best (`min_by_key` keeps the first of equal keys): arrival order breaks ties.
        let (index, _) = self.waiting.iter().enumerate().min_by_key(|(_, item)| rank(item))?;
        let item = self.waiting.remove(index)?;
        self.admissions += 1;
        if self.last_admitted.len() >= REMEMBERED_TENANTS {
            let oldest = self.admissions.saturating_sub(REMEMBERED_TENANTS as u64);
            self.last_admitted.retain(|_, at| *at > oldest);
        }
        self.last_admitted.insert(item.tenant().cloned(), self.admissions);
        Some(item)
    }

    /// Takes the items beyond `places`, each the newest request of the tenant holding the most
    /// waiting places (of two holding as many, the one whose newest request came last).
    pub(crate) fn over(&mut self, places: usize) -> Vec<T> {
        let mut shed = Vec::new();
        while self.waiting.len() > places {
            let mut held: HashMap<Option<&Arc<str>>, usize> = HashMap::new();
            for item in &self.waiting {
                *held.entry(item.tenant()).or_default() += 1;
            }
            let most = held.values().copied().max().unwrap_or(0);
            let Some(index) = self.waiting.iter().rposition(|item| held.get(&item.tenant()) == Some(&most)) else { break };
            shed.extend(self.waiting.remove(index));
        }
        shed
    }

    /// Every waiting item, in arrival order.
    pub(crate) fn take_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.waiting)
    }
}

/// Whether a tenant holding `own` waiting places (this request's included) may take the place of
/// another's newest request when the queue is full: only from a tenant that would still hold more.
pub(crate) fn may_take_a_place(own: u64, held: &HashMap<Option<Arc<str>>, u64>, tenant: Option<&Arc<str>>) -> bool {
    held.iter().any(|(other, &count)| other.as_ref() != tenant && count > own)
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

    fn running(counts: &[(&str, usize)]) -> HashMap<Option<Arc<str>>, usize> {
        counts.iter().map(|&(t, n)| ((!t.is_empty()).then(|| Arc::from(t)), n)).collect()
    }

    #[test]
    fn one_tenant_is_served_in_arrival_order() {
        let mut queue = FairQueue::default();
        for n in 0..5 {
            queue.push(req("a", n));
        }
        let order: Vec<u32> = std::iter::from_fn(|| queue.next(&running(&[("a", 1)]))).map(|r| r.1).collect();
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
        assert_eq!(queue.next(&running(&[("batch", 1)])), Some(req("chat", 100)));
        assert_eq!(queue.next(&running(&[("batch", 1), ("chat", 1)])), Some(req("batch", 0)));
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
        let order: Vec<u32> = std::iter::from_fn(|| queue.next(&running(&[]))).map(|r| r.1).collect();
        assert_eq!(order, [0, 10, 20, 1, 11, 2, 12]);
    }

    #[test]
    fn fewer_running_wins_over_turns() {
        let mut queue = FairQueue::default();
        queue.push(req("a", 0));
        queue.push(req("b", 1));
        assert_eq!(queue.next(&running(&[("a", 0), ("b", 0)])).map(|r| r.1), Some(0));
        // "b" was never admitted, but runs three already.
        queue.push(req("a", 2));
        assert_eq!(queue.next(&running(&[("a", 1), ("b", 3)])).map(|r| r.1), Some(2));
    }

    #[test]
    fn a_full_queue_sheds_the_newest_request_of_the_tenant_holding_most() {
        let mut queue = FairQueue::default();
        for n in 0..4 {
            queue.push(req("a", n));
        }
        queue.push(req("b", 10));
        let shed = queue.over(4);
        assert_eq!(shed, [req("a", 3)]);
        queue.push(req("b", 11));
        assert_eq!(queue.over(4), [req("a", 2)]);
        // Two each: a tenant's own newest request is shed when it would hold more.
        queue.push(req("a", 4));
        assert_eq!(queue.over(4), [req("a", 4)]);
        assert!(queue.over(4).is_empty());
        // Of two holding as many, the one whose newest request came last gives its place.
        assert_eq!(queue.over(3), [req("b", 11)]);
        assert_eq!(queue.take_all(), [req("a", 0), req("a", 1), req("b", 10)]);
    }

    #[test]
    fn a_place_is_taken_only_from_a_tenant_that_would_still_hold_more() {
        let held: HashMap<Option<Arc<str>>, u64> = [(Some(Arc::from("a")), 3), (Some(Arc::from("b")), 1)].into_iter().collect();
        let b = Some(Arc::from("b"));
        let a = Some(Arc::from("a"));
        // b's new request makes 2 against a's 3: taken from a.
        assert!(may_take_a_place(2, &held, b.as_ref()));
        // 3 against 3: a and b would just swap a place back and forth.
        assert!(!may_take_a_place(3, &held, b.as_ref()));
        // a's own request never takes a place from a lighter tenant.
        assert!(!may_take_a_place(4, &held, a.as_ref()));
        assert!(may_take_a_place(1, &held, None));
    }

    #[test]
    fn admission_times_are_forgotten_only_for_long_unseen_tenants() {
        let mut queue = FairQueue::default();
        for n in 0..REMEMBERED_TENANTS + 10 {
            queue.push(req(&format!("t{n}"), 0));
            assert!(queue.next(&running(&[])).is_some());
        }
        assert!(queue.last_admitted.len() <= REMEMBERED_TENANTS);
    }
}
