//! Which sequence slot a new request gets, and what KV it can reuse.
//!
//! Slots are kept compact: the running sequences always hold slots `0..n`, and a new one takes
//! slot `n`, so that llama.cpp decodes all of them in one micro-batch (with one KV stream per
//! sequence it batches only consecutive sequence ids). Free slots keep the KV cells of the
//! sequence that last used them, tagged with its tokens. A new prompt that shares a prefix with
//! such a cached slot, or with a live sequence, starts from that prefix instead of prefilling it
//! again (the chat template's system prompt; a conversation's earlier turns). Pure bookkeeping:
//! the scheduler carries out the [`Plan`] on the llama context.

/// Where a new sequence's first tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing reused: prefill the whole prompt.
    Fresh,
    /// The slot's own cached cells hold the first `common` tokens; drop the rest.
    Cached { common: usize },
    /// Copy slot `src`'s stream (a live sequence or another cached slot), keep its first
    /// `common` tokens.
    CopyFrom { src: i32, common: usize },
}

/// What to do to admit one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The slot the new sequence takes: the lowest free one.
    pub seq_id: i32,
    /// Where its prefix comes from.
    pub source: Source,
}

/// The free slots and the tokens their KV cells hold.
#[derive(Debug)]
pub(crate) struct SlotTable<T> {
    /// Indexed by slot id; `None` while a sequence runs there.
    cached: Vec<Option<Vec<T>>>,
    cached_cells: u32,
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn cells(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn id(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

impl<T: PartialEq + Clone> SlotTable<T> {
    /// `slots` empty slots, ids `0..slots`.
    pub(crate) fn new(slots: usize) -> Self {
        Self { cached: vec![Some(Vec::new()); slots], cached_cells: 0 }
    }

    /// The lowest free slot, if any.
    fn lowest_free(&self) -> Option<usize> {
        self.cached.iter().position(Option::is_some)
    }

    /// True when a slot is free.
    pub(crate) fn has_free(&self) -> bool {
        self.lowest_free().is_some()
    }

    /// KV cells held by free slots.
    pub(crate) fn cached_cells(&self) -> u32 {
        self.cached_cells
    }

    /// Plans the admission of `prompt` into the lowest free slot; `live` lists each running
    /// sequence's slot and the tokens in its KV. Reuses at least `min_reuse` tokens or nothing,
    /// and copies another slot's stream only if that reuses `min_copy_gain` more tokens than the
    /// target slot's own cache. `None` when no slot is free.
    pub(crate) fn plan(&self, prompt: &[T], live: &[(i32, &[T])], min_reuse: usize, min_copy_gain: usize) -> Option<Plan> {
        let target = self.lowest_free()?;
        // The last prompt token is always decoded again: its logits give the first new token.
        let limit = prompt.len().saturating_sub(1);
        let own = self.cached[target].as_deref().map_or(0, |c| common_prefix(c, prompt).min(limit));
        let others = self
            .cached
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((id(i), c.as_deref()?)))
            .filter(|&(i, _)| i != id(target))
            .chain(live.iter().copied())
            .map(|(src, tokens)| (src, common_prefix(tokens, prompt).min(limit)))
            .max_by_key(|&(src, common)| (common, std::cmp::Reverse(src)));
        let source = match others {
            // Copying a stream costs a memcpy: worth it only for a clearly longer prefix.
            Some((src, common)) if common >= own + min_copy_gain.max(1) && common >= min_reuse => {
                Source::CopyFrom { src, common }
            }
            _ if own >= min_reuse && own > 0 => Source::Cached { common: own },
            _ => Source::Fresh,
        };
        Some(Plan { seq_id: id(target), source })
    }

    /// The tokens free slot `seq_id` still holds (`None` if it is running a sequence).
    pub(crate) fn cached_tokens(&self, seq_id: i32) -> Option<&[T]> {
        self.cached.get(usize::try_from(seq_id).ok()?)?.as_deref()
    }

    /// Records that `plan` was carried out: its slot now runs a sequence.
    pub(crate) fn take(&mut self, plan: &Plan) {
        let slot = usize::try_from(plan.seq_id).ok().and_then(|i| self.cached.get_mut(i));
        if let Some(Some(tokens)) = slot.map(Option::take) {
            self.cached_cells -= cells(tokens.len());
        }
    }

    /// Frees slot `seq_id`, whose KV now holds `cached` (empty if it was cleared).
    pub(crate) fn put_back(&mut self, seq_id: i32, cached: Vec<T>) {
        if let Some(slot) = usize::try_from(seq_id).ok().and_then(|i| self.cached.get_mut(i)) {
            debug_assert!(slot.is_none(), "slot {seq_id} freed twice");
            self.cached_cells += cells(cached.len());
            *slot = Some(cached);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose slots hold these caches (`None`: busy).
    fn table(slots: &[Option<&[u8]>]) -> SlotTable<u8> {
        let mut t = SlotTable::new(slots.len());
        for (i, s) in slots.iter().enumerate() {
            let plan = Plan { seq_id: id(i), source: Source::Fresh };
            t.take(&plan);
            if let Some(tokens) = s {
                t.put_back(id(i), tokens.to_vec());
            }
        }
        t
    }

    #[test]
    fn new_sequences_take_the_lowest_free_slot() {
        let t: SlotTable<u8> = SlotTable::new(3);
        assert_eq!(t.plan(b"hello", &[], 1, 1).unwrap(), Plan { seq_id: 0, source: Source::Fresh });
        let t = table(&[None, None, Some(b""), Some(b"")]);
        assert_eq!(t.plan(b"hello", &[], 1, 1).unwrap().seq_id, 2);
    }

    #[test]
    fn no_free_slot_means_no_plan() {
        let t = table(&[None, None]);
        assert!(t.plan(b"x", &[], 1, 1).is_none());
    }

    #[test]
    fn the_target_slots_own_cache_is_reused_without_a_copy() {
        let t = table(&[None, Some(b"abcdefgh"), Some(b"abcdefgh")]);
        assert_eq!(t.plan(b"abcdefZ", &[], 1, 1).unwrap(), Plan { seq_id: 1, source: Source::Cached { common: 6 } });
        // Identical prompt: everything but the last token is reused.
        assert_eq!(t.plan(b"abcdefgh", &[], 1, 1).unwrap().source, Source::Cached { common: 7 });
    }

    #[test]
    fn a_longer_prefix_elsewhere_is_copied_into_the_target_slot() {
        let t = table(&[None, Some(b"abXX"), Some(b"abcdefgh")]);
        assert_eq!(t.plan(b"abcdefZ", &[], 1, 1).unwrap(), Plan { seq_id: 1, source: Source::CopyFrom { src: 2, common: 6 } });
        let live: &[u8] = b"abcdeQQ";
        let t = table(&[None, Some(b"")]);
        assert_eq!(t.plan(b"abcdeZZ", &[(0, live)], 1, 1).unwrap().source, Source::CopyFrom { src: 0, common: 5 });
    }

    #[test]
    fn a_copy_must_gain_enough_over_the_own_cache() {
        let t = table(&[Some(b"abcdXX"), Some(b"abcdefgX")]);
        assert_eq!(t.plan(b"abcdefgZ", &[], 1, 4).unwrap().source, Source::Cached { common: 4 });
        assert_eq!(t.plan(b"abcdefgZ", &[], 1, 3).unwrap().source, Source::CopyFrom { src: 1, common: 7 });
    }

    #[test]
    fn short_matches_below_the_minimum_are_not_reused() {
        let t = table(&[Some(b"abXXXXXX"), Some(b"abYY")]);
        assert_eq!(t.plan(b"abZZ", &[], 4, 1).unwrap().source, Source::Fresh);
    }

    #[test]
    fn take_and_put_back_keep_the_cell_count_exact() {
        let mut t = SlotTable::new(1);
        let plan = t.plan(&[1u8, 2, 3], &[], 1, 1).unwrap();
        t.take(&plan);
        assert!(!t.has_free());
        t.put_back(plan.seq_id, vec![1, 2, 3, 4]);
        assert_eq!(t.cached_cells(), 4);
        let again = t.plan(&[1u8, 2, 3, 4, 5], &[], 1, 1).unwrap();
        assert_eq!(again.source, Source::Cached { common: 4 });
        t.take(&again);
        assert_eq!(t.cached_cells(), 0, "a reused slot's cells belong to its new sequence");
    }
}
