//! Prompt states saved to host memory: when a slot's cached KV is about to be overwritten, its
//! sequence state is copied here, so that a later prompt sharing a long prefix with it (a
//! conversation coming back after others took its slot, a repeated prompt) restores it instead
//! of prefilling again. Bounded in bytes, least recently used first out.

use std::collections::VecDeque;

struct Entry<T, S> {
    tokens: Vec<T>,
    state: S,
    bytes: usize,
}

/// Saved sequence states `S`, keyed by the tokens they hold.
pub(crate) struct HostCache<T, S> {
    /// Least recently used first.
    entries: VecDeque<Entry<T, S>>,
    bytes: usize,
    limit: usize,
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<T: PartialEq, S> HostCache<T, S> {
    /// An empty cache holding at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, limit }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when some entry already holds all of `tokens` (saving them again is pointless).
    pub(crate) fn covers(&self, tokens: &[T]) -> bool {
        self.entries.iter().any(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(tokens))
    }

    /// The entry sharing the longest prefix with `prompt`: (index, shared tokens).
    pub(crate) fn best(&self, prompt: &[T]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .filter(|&(_, common)| common > 0)
            .max_by_key(|&(i, common)| (common, i))
    }

    /// Marks entry `index` as just used and returns its state.
    pub(crate) fn take_use(&mut self, index: usize) -> Option<&S> {
        let entry = self.entries.remove(index)?;
        self.entries.push_back(entry);
        self.entries.back().map(|e| &e.state)
    }

    /// Saves `state` (of `bytes` bytes) for `tokens`, dropping entries it makes redundant and the
    /// least recently used ones beyond the limit. A state larger than the whole limit is not kept.
    pub(crate) fn insert(&mut self, tokens: Vec<T>, state: S, bytes: usize) {
        if bytes > self.limit || self.covers(&tokens) {
            return;
        }
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            let redundant = tokens.starts_with(&e.tokens);
            if redundant {
                freed += e.bytes;
            }
            !redundant
        });
        debug_assert!(self.entries.len() <= before);
        self.bytes -= freed;
        while self.bytes + bytes > self.limit {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.bytes,
                None => break,
            }
        }
        self.bytes += bytes;
        self.entries.push_back(Entry { tokens, state, bytes });
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
        assert_eq!(c.best(b"abcdeZ"), Some((1, 5)));
        assert_eq!(c.take_use(1), Some(&"two"));
        assert_eq!(c.best(b"zzz"), None);
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_limit() {
        let mut c: HostCache<u8, u32> = HostCache::new(25);
        c.insert(b"a1".to_vec(), 1, 10);
        c.insert(b"b1".to_vec(), 2, 10);
        assert!(c.take_use(0).is_some()); // "a1" is now the most recent
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
}
