//! Cheap features of a request's text that the complexity scorer and `reasons` use.

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
}

/// Short, frequent words that tell the five languages apart.
const STOPWORDS: &[(&str, &[&str])] = &[
    ("en", &["the", "and", "is", "you", "to", "of", "what", "with", "please", "how"]),
    ("de", &["der", "die", "und", "ist", "nicht", "ich", "sie", "mit", "bitte", "wie"]),
    ("fr", &["le", "la", "les", "et", "est", "vous", "je", "pour", "avec", "une"]),
    ("it", &["il", "che", "di", "non", "sono", "per", "con", "una", "mi", "grazie"]),
    ("es", &["el", "los", "que", "y", "es", "por", "con", "para", "una", "gracias"]),
];

/// Only the start of the text is read for the language guess: it is enough, and keeps the
/// cost flat for long prompts.
const LANGUAGE_WINDOW: usize = 600;

/// Features of `text` (the conversation's text) with `turns` messages.
pub fn features(text: &str, turns: usize, tools: bool) -> Features {
    let code = text.contains("```") || text.contains("fn ") || text.contains("def ") || text.contains("#include");
    let math = text.chars().filter(|c| matches!(c, '=' | '∑' | '∫' | '^' | '√' | '≤' | '≥')).count() >= 2;
    Features { code, math, turns, tools, language: language(text) }
}

fn language(text: &str) -> &'static str {
    let mut end = LANGUAGE_WINDOW.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut hits = [0_u32; 5];
    for word in text[..end].split(|c: char| !c.is_alphabetic()).filter(|w| (1..=7).contains(&w.len())) {
        for (i, (_, words)) in STOPWORDS.iter().enumerate() {
            if words.iter().any(|s| s.eq_ignore_ascii_case(word)) {
                hits[i] += 1;
            }
        }
    }
    let (best, &count) = hits.iter().enumerate().max_by_key(|(_, n)| **n).unwrap_or((0, &0));
    if count >= 2 {
        STOPWORDS[best].0
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
    fn detects_code_and_math() {
        let f = features("```rust\nfn main() {}\n```", 3, true);
        assert!(f.code && f.tools && !f.math);
        assert!(features("x^2 = 4", 1, false).math);
    }
}
