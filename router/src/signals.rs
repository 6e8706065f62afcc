//! Cheap features of a request's text that the complexity scorer and `reasons` use. One
//! automaton pass finds code markers and reasoning markers together; math symbols are counted on
//! bytes: this runs on every request, so it must cost a few microseconds at most.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind};

/// Words that usually mark multi-step reasoning or expert work (matched case-insensitively).
pub const REASONING_MARKERS: &[&str] = &[
    "prove", "proof", "derive", "theorem", "step by step", "analyze", "analyse", "architecture",
    "optimize", "optimise", "algorithm", "complexity", "refactor", "implement", "debug",
    "trade-off", "tradeoff", "compare and contrast", "formal", "rigorous", "integral", "equation",
];

/// Marks of source code.
const CODE_MARKERS: &[&str] = &["```", "fn ", "def ", "#include"];

static MARKERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(AhoCorasickKind::DFA))
        .build(REASONING_MARKERS.iter().chain(CODE_MARKERS))
        // A fixed list of short ASCII words always builds.
        .expect("marker automaton builds")
});

/// Features of the conversation's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// A fenced code block or code-like lines.
    pub code: bool,
    /// Math notation.
    pub math: bool,
    /// Number of messages.
    pub turns: usize,
    /// The request defines tools.
    pub tools: bool,
    /// Best-guess language (`en`, `de`, `fr`, `it`, `es`) or `und`.
    pub language: &'static str,
    /// Which [`REASONING_MARKERS`] occur (bit i for marker i).
    pub reasoning_markers: u32,
    /// How many numbers the text states: runs of digits (`3.5` and `1,000` count once) that do
    /// not continue an ASCII word (`H2O`, `x2`, `sha256` are not numbers; `€5` is).
    pub numbers: u32,
}

impl Features {
    /// The reasoning markers found, in list order.
    pub fn reasoning_marker_words(&self) -> impl Iterator<Item = &'static str> + '_ {
        REASONING_MARKERS.iter().enumerate().filter(|(i, _)| self.reasoning_markers & (1 << i) != 0).map(|(_, m)| *m)
    }
}

/// The five languages told apart by their stopwords.
const LANGUAGES: [&str; 5] = ["en", "de", "fr", "it", "es"];

/// The language a short, frequent word marks (lower-case ASCII input).
fn stopword_language(word: &[u8]) -> Option<usize> {
    match word {
        b"the" | b"and" | b"is" | b"you" | b"to" | b"of" | b"what" | b"with" | b"please" | b"how" => Some(0),
        b"der" | b"die" | b"und" | b"ist" | b"nicht" | b"ich" | b"sie" | b"mit" | b"bitte" | b"wie" => Some(1),
        b"le" | b"la" | b"les" | b"et" | b"est" | b"vous" | b"je" | b"pour" | b"avec" | b"une" => Some(2),
        b"il" | b"che" | b"di" | b"non" | b"sono" | b"per" | b"mi" | b"grazie" => Some(3),
        b"el" | b"los" | b"que" | b"y" | b"es" | b"por" | b"para" | b"gracias" => Some(4),
        _ => None,
    }
}

/// Only the start of the text is read for the language guess: it is enough, and keeps the
/// cost flat for long prompts.
const LANGUAGE_WINDOW: usize = 600;

/// Features of `text` (the conversation's text) with `turns` messages.
pub fn features(text: &str, turns: usize, tools: bool) -> Features {
    let mut code = false;
    let mut reasoning_markers = 0_u32;
    let bytes = text.as_bytes();
    // Overlapping, so that a match refused for its left edge cannot hide one that starts inside it.
    for m in MARKERS.find_overlapping_iter(text) {
        // A word marker counts only at the start of a word: "prove" in "proves", not in "approves";
        // "fn " not in "FKHFN WKH".
        if bytes[m.start()].is_ascii_alphabetic() && m.start() > 0 && is_word_byte(bytes[m.start() - 1]) {
            continue;
        }
        let i = m.pattern().as_usize();
        if i < REASONING_MARKERS.len() {
            reasoning_markers |= 1 << i;
        } else {
            code = true;
        }
    }
    let (symbols, numbers) = math_symbols_and_numbers(bytes);
    Features { code, math: symbols >= 2, turns, tools, language: language(text), reasoning_markers, numbers }
}

/// A byte that continues a word (ASCII letters and digits, `_`, and any byte of a non-ASCII
/// character, so that "é" before a marker is part of the word too).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Counts `=`, `^`, `∑`, `∫`, `√`, `≤`, `≥`, and the numbers (see [`Features::numbers`]), in one
/// pass on bytes (no UTF-8 decoding: this runs on every prompt).
fn math_symbols_and_numbers(bytes: &[u8]) -> (usize, u32) {
    let mut symbols = 0;
    let mut numbers = 0_u32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' | b'^' => symbols += 1,
            // U+2211 ∑, U+221A √, U+222B ∫ (E2 88 xx); U+2264 ≤, U+2265 ≥ (E2 89 xx).
            0xE2 => {
                if let [0x88, 0x91 | 0x9A | 0xAB, ..] | [0x89, 0xA4 | 0xA5, ..] = &bytes[i + 1..] {
                    symbols += 1;
                }
            }
            b'0'..=b'9' => {
                // Not after an ASCII letter, digit or `_` (`H2O`, `x2`); after a non-ASCII
                // character it is one (`€5`, `“3`).
                let starts_number = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                // The whole run: digits, and `.` or `,` between digits.
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_digit()
                        || (matches!(bytes[i + 1], b'.' | b',') && bytes.get(i + 2).is_some_and(u8::is_ascii_digit)))
                {
                    i += 1;
                }
                if starts_number {
                    numbers = numbers.saturating_add(1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    (symbols, numbers)
}

fn language(text: &str) -> &'static str {
    let window = &text.as_bytes()[..LANGUAGE_WINDOW.min(text.len())];
    let mut hits = [0_u32; LANGUAGES.len()];
    let mut buffer = [0_u8; 8];
    for raw in window.split(|b| !b.is_ascii_alphabetic()).filter(|w| (1..=8).contains(&w.len())) {
        let word = &mut buffer[..raw.len()];
        word.copy_from_slice(raw);
        word.make_ascii_lowercase();
        if let Some(i) = stopword_language(word) {
            hits[i] += 1;
        }
    }
    let (best, &count) = hits.iter().enumerate().max_by_key(|(_, n)| **n).unwrap_or((0, &0));
    if count >= 2 {
        LANGUAGES[best]
    } else {
        "und"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_language_from_stopwords() {
        assert_eq!(features("What is the capital of France, please?", 1, false).language, "en");
        assert_eq!(features("Wie ist das Wetter? Ich weiß es nicht.", 1, false).language, "de");
        assert_eq!(features("Je voudrais une table pour deux, avec vue.", 1, false).language, "fr");
        assert_eq!(features("Ciao", 1, false).language, "und");
    }

    #[test]
    fn markers_count_only_at_the_start_of_a_word() {
        let words = |t: &str| features(t, 1, false).reasoning_marker_words().collect::<Vec<_>>();
        assert!(words("Leigh approves of pizza; the draft needs improvement.").is_empty());
        assert!(words("An informal chat about the weather.").is_empty());
        assert_eq!(words("Prove it, then she proves the next one."), ["prove"]);
        assert_eq!(words("(prove) the implementation's complexity"), ["prove", "complexity", "implement"]);
        assert!(!features("SOHDVH FKHFN WKH SURMHFW, undef x", 1, false).code);
        assert!(features("fn main() {}", 1, false).code);
        assert!(features("see:```rust\nlet x = 1;\n```", 1, false).code);
    }

    #[test]
    fn detects_code_and_math() {
        let f = features("```rust\nfn main() {}\n```", 3, true);
        assert!(f.code && f.tools && !f.math);
        assert!(features("x^2 = 4", 1, false).math);
        assert!(features("∫ f ≤ ∑ g", 1, false).math);
        assert!(!features("a = b", 1, false).math);
    }

    #[test]
    fn counts_numbers_not_digits_inside_words() {
        let numbers = |t: &str| features(t, 1, false).numbers;
        assert_eq!(numbers("Hi"), 0);
        assert_eq!(numbers("She buys 3 apples at $1.25 each and 1,000 pears."), 3);
        assert_eq!(numbers("H2O, x2 and sha256 are names; 42 is a number."), 1);
        assert_eq!(numbers("12"), 1);
        assert_eq!(numbers("(-7)+8=1. Then 2."), 4);
        assert_eq!(numbers("It costs €5, £10 or ¥300 – “3” offers."), 4);
    }
}
