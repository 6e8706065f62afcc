//! Which sequence slot a new request gets, and what KV it can reuse.
//!
//! Finished sequences leave their KV cells in place, tagged with the tokens they hold. A new
//! prompt that shares a prefix with such a cached slot, or with a live sequence, starts from that
//! prefix instead of prefilling it again (the chat template's system prompt; a conversation's
//! earlier turns). Each slot owns its own KV stream, so a cached slot costs no other slot room;
//! a slot's cache is dropped only when the slot is reused. Pure bookkeeping: the scheduler carries
//! out the [`Plan`] on the llama context.

/// A sequence slot not serving anyone, possibly still holding KV cells.
#[derive(Debug, Clone)]
struct FreeSlot<T> {
    seq_id: i32,
    /// Tokens whose KV cells this slot still holds, from position 0.
    cached: Vec<T>,
    /// When it was freed, for least-recently-used eviction.
    freed_at: u64,
}

/// Where a new sequence's first tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing reused: prefill the whole prompt.
    Fresh,
    /// The slot's own cached cells hold the first `common` tokens; drop the rest.
    Cached { common: usize },
    /// Copy the first `common` tokens' cells from live sequence `src` (shared, not duplicated,
    /// in a unified KV cache).
    CopyFrom { src: i32, common: usize },
}

/// What to do to admit one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The slot the new sequence takes.
    pub seq_id: i32,
    /// Where its prefix comes from.
    pub source: Source,
}

/// The free slots and the KV cells they hold.
#[derive(Debug)]
pub(crate) struct SlotTable<T> {
    free: Vec<FreeSlot<T>>,
    cached_cells: u32,
    clock: u64,
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn cells(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<T: PartialEq + Clone> SlotTable<T> {
    /// `slots` empty slots, ids `0..slots`.
    pub(crate) fn new(slots: i32) -> Self {
        let free = (0..slots).map(|seq_id| FreeSlot { seq_id, cached: Vec::new(), freed_at: 0 }).collect();
        Self { free, cached_cells: 0, clock: 0 }
    }

    /// True when a slot is free.
    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// KV cells held by free slots.
    pub(crate) fn cached_cells(&self) -> u32 {
        self.cached_cells
    }

    /// Plans the admission of `prompt`; `live` lists each active sequence's id and the tokens in
    /// its KV. Reuses at least `min_reuse` tokens or nothing. `None` when no slot is free.
    pub(crate) fn plan(&self, prompt: &[T], live: &[(i32, &[T])], min_reuse: usize) -> Option<Plan> {
        // The last prompt token is always decoded again: its logits give the first new token.
        let limit = prompt.len().saturating_sub(1);
        let best_free = self
            .free
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.cached, prompt).min(limit)))
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)));
        let best_live = live
            .iter()
            .map(|(id, tokens)| (*id, common_prefix(tokens, prompt).min(limit)))
            .max_by_key(|&(_, common)| common);
        let (free_index, free_common) = best_free?;
        let (slot, source) = match best_live {
            Some((src, common)) if common > free_common && common >= min_reuse => {
                (self.cheapest_free(), Source::CopyFrom { src, common })
            }
            _ if free_common >= min_reuse && free_common > 0 => (free_index, Source::Cached { common: free_common }),
            _ => (self.cheapest_free(), Source::Fresh),
        };
        Some(Plan { seq_id: self.free[slot].seq_id, source })
    }

    /// The free slot that holds the least (empty first), least recently used on ties.
    fn cheapest_free(&self) -> usize {
        self.free
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.cached.len(), s.freed_at))
            .map_or(0, |(i, _)| i)
    }

    /// Records that `plan` was carried out: the slot is taken.
    pub(crate) fn take(&mut self, plan: &Plan) {
        if let Some(i) = self.free.iter().position(|s| s.seq_id == plan.seq_id) {
            let slot = self.free.swap_remove(i);
            self.cached_cells -= cells(slot.cached.len());
        }
    }

    /// Frees `seq_id`, whose KV still holds `cached` (empty if it was cleared).
    pub(crate) fn put_back(&mut self, seq_id: i32, cached: Vec<T>) {
        self.clock += 1;
        self.cached_cells += cells(cached.len());
        self.free.push(FreeSlot { seq_id, cached, freed_at: self.clock });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(cached: &[&[u8]]) -> SlotTable<u8> {
        let mut t = SlotTable::new(0);
        for (i, c) in cached.iter().enumerate() {
            t.put_back(i32::try_from(i).unwrap(), c.to_vec());
        }
        t
    }

    #[test]
    fn empty_table_plans_fresh_prefill_in_an_empty_slot() {
        let t: SlotTable<u8> = SlotTable::new(2);
        assert_eq!(t.plan(b"hello", &[], 1).unwrap().source, Source::Fresh);
    }

    #[test]
    fn no_free_slot_means_no_plan() {
        let mut t: SlotTable<u8> = SlotTable::new(1);
        let plan = t.plan(b"x", &[], 1).unwrap();
        t.take(&plan);
        assert!(t.plan(b"x", &[], 1).is_none());
    }

    #[test]
    fn reuses_the_cached_slot_with_the_longest_prefix_but_never_the_last_token() {
        let t = table_with(&[b"abcXXX", b"abcdefgh", b""]);
        assert_eq!(t.plan(b"abcdefZ", &[], 1).unwrap(), Plan { seq_id: 1, source: Source::Cached { common: 6 } });
        // Identical prompt: everything but the last token is reused.
        assert_eq!(t.plan(b"abcdefgh", &[], 1).unwrap().source, Source::Cached { common: 7 });
    }

    #[test]
    fn short_matches_below_the_minimum_are_not_reused_and_keep_useful_caches() {
        let t = table_with(&[b"abXXXXXX", b""]);
        let plan = t.plan(b"abZZ", &[], 4).unwrap();
        assert_eq!(plan.source, Source::Fresh);
        assert_eq!(plan.seq_id, 1, "the empty slot is used, the cached one kept");
    }

    #[test]
    fn copies_from_a_live_sequence_when_it_shares_more() {
        let t = table_with(&[b"abc", b""]);
        let live: &[u8] = b"abcdefgh";
        let plan = t.plan(b"abcdefgZ", &[(7, live)], 1).unwrap();
        assert_eq!(plan.source, Source::CopyFrom { src: 7, common: 7 });
        assert_eq!(plan.seq_id, 1, "copies into the slot that holds least");
    }

    #[test]
    fn without_an_empty_slot_the_least_recently_freed_cache_is_replaced() {
        let t = table_with(&[b"old", b"new"]);
        assert_eq!(t.plan(b"zzz", &[], 1).unwrap().seq_id, 0);
    }

    #[test]
    fn take_and_put_back_keep_the_cell_count_exact() {
        let mut t = SlotTable::new(1);
        let plan = t.plan(&[1u8, 2, 3], &[], 1).unwrap();
        t.take(&plan);
        assert!(!t.has_free());
        t.put_back(plan.seq_id, vec![1, 2, 3, 4]);
        assert_eq!(t.cached_cells(), 4);
        let again = t.plan(&[1u8, 2, 3, 4, 5], &[], 1).unwrap();
        assert_eq!(again.source, Source::Cached { common: 4 });
        t.take(&again);
        assert_eq!(t.cached_cells(), 0, "a reused slot's cells belong to its new sequence");
    }
}
