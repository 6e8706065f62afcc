//! Prompt states saved to host memory: when a slot's cached KV is about to be overwritten, its
//! sequence state is copied here, so that a later prompt sharing a long prefix with it (a
//! conversation coming back after others took its slot, a repeated prompt) restores it instead
//! of prefilling again. Bounded in bytes, least recently used first out.

use std::collections::VecDeque;

struct Entry<T, S> {
    id: EntryId,
    tokens: Vec<T>,
    state: S,
    bytes: usize,
}

/// Names one saved state for as long as it stays in the cache. Not a position: inserting a state
/// can evict or drop others, so a position found before an insert may name another entry after
/// it (which once restored one conversation's cells under another's prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryId(u64);

/// Saved sequence states `S`, keyed by the tokens they hold.
pub(crate) struct HostCache<T, S> {
    /// Least recently used first.
    entries: VecDeque<Entry<T, S>>,
    bytes: usize,
    limit: usize,
    next_id: u64,
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<T: PartialEq, S> HostCache<T, S> {
    /// An empty cache holding at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, limit, next_id: 0 }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when some entry already holds all of `tokens` (saving them again is pointless).
    pub(crate) fn covers(&self, tokens: &[T]) -> bool {
        self.entries.iter().any(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(tokens))
    }

    /// The entry sharing the longest prefix with `prompt` (the most recently used among equals):
    /// its id and the number of shared tokens.
    pub(crate) fn best(&self, prompt: &[T]) -> Option<(EntryId, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.id, common_prefix(&e.tokens, prompt)))
            .filter(|&(_, _, common)| common > 0)
            .max_by_key(|&(i, _, common)| (common, i))
            .map(|(_, id, common)| (id, common))
    }

    /// Marks entry `id` as just used and returns its tokens and state; `None` if it has been
    /// evicted since it was found.
    pub(crate) fn take_use(&mut self, id: EntryId) -> Option<(&[T], &S)> {
        let index = self.entries.iter().position(|e| e.id == id)?;
        let entry = self.entries.remove(index)?;
        self.entries.push_back(entry);
        self.entries.back().map(|e| (e.tokens.as_slice(), &e.state))
    }

    /// Makes room for a state of `bytes` bytes holding `tokens`: takes out the entries it would
    /// make redundant (prefixes of `tokens`) and the least recently used ones beyond the limit,
    /// and returns their states, so that the new state can be written into one of their buffers
    /// instead of fresh memory.
    pub(crate) fn make_room(&mut self, tokens: &[T], bytes: usize) -> Vec<S> {
        let (redundant, kept): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.entries).into_iter().partition(|e| tokens.starts_with(&e.tokens));
        self.entries = kept;
        let mut out = Vec::new();
        for old in redundant {
            self.bytes -= old.bytes;
            out.push(old.state);
        }
        while self.bytes + bytes > self.limit {
            match self.entries.pop_front() {
                Some(old) => {
                    self.bytes -= old.bytes;
                    out.push(old.state);
                }
                None => break,
            }
        }
        out
    }

    /// Whether a state of `bytes` bytes holding `tokens` would be kept (it fits the limit and no
    /// entry holds all of `tokens` already).
    pub(crate) fn would_keep(&self, tokens: &[T], bytes: usize) -> bool {
        bytes <= self.limit && !self.covers(tokens)
    }

    /// Saves `state` (of `bytes` bytes) for `tokens`, dropping entries it makes redundant and the
    /// least recently used ones beyond the limit. A state larger than the whole limit is not kept.
    pub(crate) fn insert(&mut self, tokens: Vec<T>, state: S, bytes: usize) {
        if !self.would_keep(&tokens, bytes) {
            return;
        }
        drop(self.make_room(&tokens, bytes));
        self.bytes += bytes;
        let id = EntryId(self.next_id);
        self.next_id += 1;
        self.entries.push_back(Entry { id, tokens, state, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_longest_shared_prefix() {
        let mut c: HostCache<u8, &str> = HostCache::new(100);
        c.insert(b"abcX".to_vec(), "one", 10);
        c.insert(b"abcdeY".to_vec(), "two", 10);
        let (id, common) = c.best(b"abcdeZ").unwrap();
        assert_eq!(common, 5);
        assert_eq!(c.take_use(id).map(|(tokens, state)| (tokens.to_vec(), *state)), Some((b"abcdeY".to_vec(), "two")));
        assert_eq!(c.best(b"zzz"), None);
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_limit() {
        let mut c: HostCache<u8, u32> = HostCache::new(25);
        c.insert(b"a1".to_vec(), 1, 10);
        c.insert(b"b1".to_vec(), 2, 10);
        let (a1, _) = c.best(b"a1").unwrap();
        assert!(c.take_use(a1).is_some()); // "a1" is now the most recent
        c.insert(b"c1".to_vec(), 3, 10);
        assert_eq!(c.bytes(), 20);
        assert!(c.best(b"a1").is_some());
        assert!(c.best(b"b1").is_none(), "b1 was least recently used");
        c.insert(b"huge".to_vec(), 4, 26);
        assert!(c.best(b"huge").is_none(), "larger than the whole cache");
    }

    #[test]
    fn a_longer_state_replaces_its_own_prefixes_and_covered_ones_are_skipped() {
        let mut c: HostCache<u8, u32> = HostCache::new(100);
        c.insert(b"abc".to_vec(), 1, 10);
        c.insert(b"abcdef".to_vec(), 2, 20);
        assert_eq!(c.bytes(), 20);
        assert!(c.covers(b"abcd"));
        c.insert(b"abcd".to_vec(), 3, 12);
        assert_eq!(c.bytes(), 20, "already covered by abcdef");
    }

    #[test]
    fn an_id_found_before_an_insert_names_the_same_entry_after_it() {
        let mut c: HostCache<u8, &str> = HostCache::new(30);
        c.insert(b"a1".to_vec(), "a", 10);
        c.insert(b"b1".to_vec(), "b", 10);
        c.insert(b"c1".to_vec(), "c", 10);
        let (c1, _) = c.best(b"c1").unwrap();
        let (a1, _) = c.best(b"a1").unwrap();
        // This insert evicts "a1" (least recently used): every entry after it moves up one place.
        c.insert(b"d1".to_vec(), "d", 10);
        assert_eq!(c.take_use(c1).map(|(t, s)| (t.to_vec(), *s)), Some((b"c1".to_vec(), "c")));
        assert!(c.take_use(a1).is_none(), "an evicted entry is gone, not replaced by another");
    }

    #[test]
    fn making_room_hands_back_the_states_it_takes_out() {
        let mut c: HostCache<u8, u32> = HostCache::new(30);
        c.insert(b"ab".to_vec(), 1, 10);
        c.insert(b"x1".to_vec(), 2, 10);
        c.insert(b"y1".to_vec(), 3, 10);
        // "ab" is a prefix of the new tokens (redundant); then "x1" is least recently used.
        let mut out = c.make_room(b"abc", 15);
        out.sort_unstable();
        assert_eq!(out, vec![1, 2]);
        assert_eq!(c.bytes(), 10);
        assert!(c.best(b"y1").is_some());
        assert!(c.make_room(b"zz", 5).is_empty(), "room enough already");
        assert!(!c.would_keep(b"y", 5), "y1 holds it");
        assert!(!c.would_keep(b"q", 31), "larger than the limit");
    }
}
