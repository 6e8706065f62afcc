//! A provider's key, and the scrubbing of it from whatever the provider writes back: an error
//! that quotes the key but its last character, or its first twenty, still gives most of it away,
//! so every run of [`FRAGMENT`] or more of the key's characters counts.

use aho_corasick::AhoCorasick;

/// The shortest run of a key's characters that is scrubbed (a shorter key: the whole key).
/// Providers' own masked echoes (`sk-abc***wxyz`) show fewer.
const FRAGMENT: usize = 16;

/// What a key looks like inside other text.
#[derive(Debug)]
pub struct Secret {
    /// Every run of `FRAGMENT` characters of the key.
    fragments: AhoCorasick,
}

impl Secret {
    /// The scrubber of `key` (ASCII, as a header value is); `None` if it cannot be built.
    pub fn new(key: &str) -> Option<Self> {
        let width = FRAGMENT.min(key.len());
        let mut windows: Vec<&str> = (0..=key.len() - width).filter_map(|at| key.get(at..at + width)).collect();
        windows.sort_unstable();
        windows.dedup();
        AhoCorasick::new(windows).ok().map(|fragments| Self { fragments })
    }

    /// True when `text` holds any run of the key.
    pub fn appears_in(&self, text: &str) -> bool {
        self.fragments.is_match(text)
    }

    /// `text` with every run of the key replaced by `[redacted]`; `None` when it holds none.
    pub fn scrub(&self, text: &str) -> Option<String> {
        // Overlapping windows join into the whole run they cover.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for found in self.fragments.find_overlapping_iter(text) {
            match runs.last_mut() {
                Some((_, end)) if found.start() <= *end => *end = (*end).max(found.end()),
                _ => runs.push((found.start(), found.end())),
            }
        }
        if runs.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end) in runs {
            out.push_str(&text[last..start]);
            out.push_str("[redacted]");
            last = end;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    const KEY: &str = "sk-proj-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c";

    #[test]
    fn the_whole_key_and_long_runs_of_it_are_scrubbed() {
        let secret = Secret::new(KEY).unwrap();
        assert_eq!(secret.scrub(&format!("bad key {KEY}.")).unwrap(), "bad key [redacted].");
        // All but the last character, and the first twenty.
        assert_eq!(secret.scrub(&format!("bad key {}.", &KEY[..KEY.len() - 1])).unwrap(), "bad key [redacted].");
        assert_eq!(secret.scrub(&format!("key {} rest", &KEY[..20])).unwrap(), "key [redacted] rest");
        // Twice, and a middle run.
        assert_eq!(secret.scrub(&format!("{KEY} and {}", &KEY[10..30])).unwrap(), "[redacted] and [redacted]");
        // A provider's own mask shows too little to matter; other text is left alone.
        assert_eq!(secret.scrub("Incorrect API key provided: sk-proj-****6b5c."), None);
        assert!(!secret.appears_in("nothing here") && secret.appears_in(&KEY[5..25]));
    }

    #[test]
    fn a_short_key_is_scrubbed_whole() {
        let secret = Secret::new("sk-short1").unwrap();
        assert_eq!(secret.scrub("x sk-short1 y").unwrap(), "x [redacted] y");
        assert_eq!(secret.scrub("x sk-short y"), None);
    }
}
