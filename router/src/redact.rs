//! Redact-and-restore: PII spans become typed placeholders (`<EMAIL_1>`) before a request leaves,
//! and placeholders in the answer become the original values again — also in streams, where a
//! placeholder may arrive split across chunks.

use std::collections::{HashMap, HashSet};

use crate::pii::PiiSpan;

/// The placeholders given out for one request and the values they stand for. The same value
/// always gets the same placeholder, so the upstream model can still tell two people apart.
/// Every lookup is hashed: a request with thousands of values or placeholder-shaped words, or an
/// answer full of `<`, costs time in proportion to its length.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    /// (placeholder, value), in order of first appearance.
    entries: Vec<(String, String)>,
    /// Index into `entries` by value, and by placeholder.
    by_value: HashMap<String, usize>,
    by_placeholder: HashMap<String, usize>,
    /// The last number given out per placeholder prefix (`<EMAIL_`).
    last_number: HashMap<String, usize>,
    /// The longest placeholder given out: text longer than it cannot become one.
    longest: usize,
    /// Placeholder-shaped text the request already contains (`<EMAIL_1>` typed by its author):
    /// never handed out, so restoring never turns the author's text into someone's data.
    taken: HashSet<String>,
}

impl Redaction {
    /// An empty redaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes the placeholder-shaped tokens (`<KIND_N>`) in `text` so that none is handed out.
    /// Call it on every text of a request before redacting any ([`Redaction::redact`] does it
    /// for its own text).
    pub fn avoid(&mut self, text: &str) {
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            rest = &rest[open..];
            let token_len = placeholder_len(rest);
            if let Some(len) = token_len {
                let token = &rest[..len];
                if !self.taken.contains(token) {
                    self.taken.insert(token.to_owned());
                }
            }
            rest = &rest[token_len.unwrap_or(1)..];
        }
    }

    /// `text` with each of `spans` (found in `text`) replaced by its placeholder.
    pub fn redact(&mut self, text: &str, spans: &[PiiSpan]) -> String {
        self.avoid(text);
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for span in spans {
            let Some(value) = text.get(span.start..span.end) else { continue };
            out.push_str(&text[last..span.start]);
            out.push_str(self.placeholder_for(span.kind.as_str(), value));
            last = span.end;
        }
        out.push_str(&text[last..]);
        out
    }

    fn placeholder_for(&mut self, kind: &str, value: &str) -> &str {
        let index = if let Some(&i) = self.by_value.get(value) { i } else {
            let prefix = format!("<{}_", kind.to_ascii_uppercase());
            let mut n = self.last_number.get(&prefix).copied().unwrap_or(0) + 1;
            let mut placeholder = format!("{prefix}{n}>");
            while self.taken.contains(&placeholder) || self.by_placeholder.contains_key(&placeholder) {
                n += 1;
                placeholder = format!("{prefix}{n}>");
            }
            self.last_number.insert(prefix, n);
            let i = self.entries.len();
            self.longest = self.longest.max(placeholder.len());
            self.by_placeholder.insert(placeholder.clone(), i);
            self.by_value.insert(value.to_owned(), i);
            self.entries.push((placeholder, value.to_owned()));
            i
        };
        &self.entries[index].0
    }

    /// Number of distinct values replaced.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `text` with every placeholder replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        let mut restorer = Restorer::default();
        let mut out = restorer.push(self, text);
        out.push_str(&restorer.finish());
        out
    }

    /// [`Redaction::restore`] for JSON text (a tool call's `arguments`): each value goes back
    /// escaped as inside a JSON string, so that one written with a tab or a quote leaves the
    /// JSON valid.
    pub fn restore_json(&self, text: &str) -> String {
        let mut restorer = Restorer::default();
        let mut out = restorer.push_json(self, text);
        out.push_str(&restorer.finish());
        out
    }

    /// The value behind the placeholder that `text` starts with, and the placeholder's length.
    fn value_at(&self, text: &str) -> Option<(&str, usize)> {
        let len = placeholder_len(text)?;
        let &i = self.by_placeholder.get(&text[..len])?;
        Some((self.entries[i].1.as_str(), len))
    }

    /// True when `text` (starting with `<`) could still grow into a placeholder: shorter than
    /// the longest, shaped like the start of one, and the start of one given out.
    fn could_become_placeholder(&self, text: &str) -> bool {
        text.len() < self.longest
            && placeholder_start(text)
            && self.entries.iter().any(|(p, _)| p.len() > text.len() && p.starts_with(text))
    }
}

/// True when `text` could be the start of a `<KIND_N>` token: `<`, then uppercase letters and
/// underscores, then digits, and no more.
fn placeholder_start(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('<') else { return false };
    let name = rest.bytes().take_while(|b| b.is_ascii_uppercase() || *b == b'_').count();
    rest.bytes().skip(name).all(|b| b.is_ascii_digit())
}

/// Length of the `<KIND_N>` token `text` starts with (KIND: uppercase letters and underscores;
/// N: digits), if it starts with one.
fn placeholder_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let name = bytes.iter().skip(1).take_while(|b| b.is_ascii_uppercase() || **b == b'_').count();
    let digits = bytes.iter().skip(1 + name).take_while(|b| b.is_ascii_digit()).count();
    let len = 1 + name + digits + 1;
    let shaped = name >= 3 && bytes.get(name) == Some(&b'_') && digits > 0 && bytes.get(len - 1) == Some(&b'>');
    shaped.then_some(len)
}

/// What a JSON text starting with a backslash holds.
enum Escaped<'a> {
    /// A placeholder written with `\u003c`/`\u003e`: its value and the written length.
    Value(&'a str, usize),
    /// The start of one, cut by the end of the piece.
    MayBe,
    /// Anything else.
    Not,
}

/// Whether `tail` (starting with a backslash) is a placeholder written `\u003cKIND_N\u003e`
/// (either case).
fn escaped_placeholder<'a>(redaction: &'a Redaction, tail: &str) -> Escaped<'a> {
    const OPEN: &str = "\\u003c";
    const CLOSE: &str = "\\u003e";
    // `text` starts with `expected`, or with as much of it as `text` holds (cut short).
    let matches = |text: &str, expected: &str| {
        let n = text.len().min(expected.len());
        text.get(..n).is_some_and(|t| t.eq_ignore_ascii_case(&expected[..n]))
    };
    if !matches(tail, OPEN) {
        return Escaped::Not;
    }
    let Some(inner) = tail.get(OPEN.len()..) else { return Escaped::MayBe };
    let name = inner.bytes().take_while(|b| b.is_ascii_uppercase() || *b == b'_').count();
    let digits = inner.bytes().skip(name).take_while(u8::is_ascii_digit).count();
    let (written, after) = inner.split_at(name + digits);
    if !matches(after, CLOSE) {
        return Escaped::Not;
    }
    let canonical = format!("<{written}>");
    if after.len() < CLOSE.len() {
        // Cut inside the name or the closing escape: wait if a placeholder given out starts so.
        let open = &canonical[..canonical.len() - 1];
        let known = redaction.could_become_placeholder(open) || redaction.value_at(&canonical).is_some();
        return if known { Escaped::MayBe } else { Escaped::Not };
    }
    match redaction.value_at(&canonical) {
        Some((value, len)) if len == canonical.len() => Escaped::Value(value, OPEN.len() + written.len() + CLOSE.len()),
        _ => Escaped::Not,
    }
}

/// `value` as the inside of a JSON string: quotes, backslashes and control characters escaped.
fn push_json_escaped(out: &mut String, value: &str) {
    let quoted = serde_json::Value::String(value.to_owned()).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// Restores placeholders in a stream of text pieces. Text that may be the start of a placeholder
/// is held back until the next piece shows whether it is one.
/// One restorer per text stream (per choice); the redaction is passed to each call.
#[derive(Debug, Default)]
pub struct Restorer {
    pending: String,
}

impl Restorer {
    /// Takes the next piece; returns the text that is now certain.
    pub fn push(&mut self, redaction: &Redaction, piece: &str) -> String {
        self.push_with(redaction, piece, false)
    }

    /// [`Restorer::push`] for JSON text: values go back escaped as inside a JSON string.
    pub fn push_json(&mut self, redaction: &Redaction, piece: &str) -> String {
        self.push_with(redaction, piece, true)
    }

    fn push_with(&mut self, redaction: &Redaction, piece: &str, json: bool) -> String {
        if redaction.is_empty() {
            return piece.to_owned();
        }
        self.pending.push_str(piece);
        let text = std::mem::take(&mut self.pending);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        // In JSON, a placeholder may come back written `\u003cEMAIL_1\u003e`: Go's encoder (Ollama,
        // LocalAI) escapes `<` and `>` that way.
        let next = |rest: &str| if json { rest.find(['<', '\\']) } else { rest.find('<') };
        while let Some(lt) = next(rest) {
            out.push_str(&rest[..lt]);
            let tail = &rest[lt..];
            if tail.starts_with('\\') {
                match escaped_placeholder(redaction, tail) {
                    Escaped::Value(value, len) => {
                        push_json_escaped(&mut out, value);
                        rest = &tail[len..];
                    }
                    Escaped::MayBe => {
                        tail.clone_into(&mut self.pending);
                        return out;
                    }
                    Escaped::Not => {
                        // The whole escape (an escaped backslash too), so its second character
                        // starts nothing.
                        let len = tail.chars().take(2).map(char::len_utf8).sum();
                        out.push_str(&tail[..len]);
                        rest = &tail[len..];
                    }
                }
            } else if let Some((value, len)) = redaction.value_at(tail) {
                if json {
                    push_json_escaped(&mut out, value);
                } else {
                    out.push_str(value);
                }
                rest = &tail[len..];
            } else if redaction.could_become_placeholder(tail) {
                tail.clone_into(&mut self.pending);
                return out;
            } else {
                out.push('<');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }

    /// Ends the stream: whatever was held back is returned as it is.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::scan;

    #[test]
    fn same_value_same_placeholder_and_round_trip() {
        let text = "Mail a@b.io or c@d.io; again a@b.io. Call +44 20 7946 0958.";
        let mut r = Redaction::new();
        let redacted = r.redact(text, &scan(text));
        assert_eq!(redacted, "Mail <EMAIL_1> or <EMAIL_2>; again <EMAIL_1>. Call <PHONE_1>.");
        assert_eq!(r.len(), 3);
        assert_eq!(r.restore(&redacted), text);
    }

    #[test]
    fn values_restored_into_json_are_escaped() {
        let text = "card 4111\t1111\t1111\t1111";
        let mut r = Redaction::new();
        let redacted = r.redact(text, &scan(text));
        assert_eq!(redacted, "card <CREDIT_CARD_1>");
        let arguments = format!("{{\"text\":\"{redacted}\"}}");
        let restored = r.restore_json(&arguments);
        assert_eq!(restored, "{\"text\":\"card 4111\\t1111\\t1111\\t1111\"}");
        let mut out = String::new();
        push_json_escaped(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, "a\\\"b\\\\c\\u0001");
    }

    #[test]
    fn placeholders_go_s_encoder_escapes_are_restored_in_json() {
        let text = "mail a@b.io";
        let mut r = Redaction::new();
        assert_eq!(r.redact(text, &scan(text)), "mail <EMAIL_1>");
        // Go's encoder (Ollama) writes `<` and `>` in a JSON string as `\u003c` and `\u003e`.
        assert_eq!(r.restore_json(r#"{"to":"\u003cEMAIL_1\u003e"}"#), r#"{"to":"a@b.io"}"#);
        assert_eq!(r.restore_json(r#"{"to":"\u003CEMAIL_1\u003E","n":"\n"}"#), r#"{"to":"a@b.io","n":"\n"}"#);
        // An escaped backslash followed by the letters is not a placeholder; nor one never given out.
        for kept in [r#"{"p":"\\u003cEMAIL_1\u003e"}"#, r#"{"to":"\u003cEMAIL_9\u003e"}"#, r#"{"x":"\u003cb\u003e"}"#, "ends with \\"] {
            assert_eq!(r.restore_json(kept), kept);
        }
        // Outside JSON, escapes are text.
        assert_eq!(r.restore(r"\u003cEMAIL_1\u003e"), r"\u003cEMAIL_1\u003e");
        // Streamed, cut anywhere.
        let whole = r#"{"to":"\u003cEMAIL_1\u003e","cc":"<EMAIL_1>"}"#;
        for cut in 1..whole.len() {
            let mut restorer = Restorer::default();
            let mut out = restorer.push_json(&r, &whole[..cut]);
            out.push_str(&restorer.push_json(&r, &whole[cut..]));
            out.push_str(&restorer.finish());
            assert_eq!(out, r#"{"to":"a@b.io","cc":"a@b.io"}"#, "cut at {cut}");
        }
    }

    #[test]
    fn placeholders_are_numbered_across_texts() {
        let mut r = Redaction::new();
        let a = r.redact("x@y.io", &scan("x@y.io"));
        let b = r.redact("z@y.io and x@y.io", &scan("z@y.io and x@y.io"));
        assert_eq!(a, "<EMAIL_1>");
        assert_eq!(b, "<EMAIL_2> and <EMAIL_1>");
    }

    #[test]
    fn placeholders_the_author_typed_are_never_handed_out() {
        // Found by fuzzing: a literal `<EMAIL_1>` in the prompt used to collide with the
        // placeholder of a real address, and restoring turned the literal into the address.
        let text = "Template: <EMAIL_1> and <EMAIL_2>. Mine is a@b.io.";
        let mut r = Redaction::new();
        let redacted = r.redact(text, &scan(text));
        assert_eq!(redacted, "Template: <EMAIL_1> and <EMAIL_2>. Mine is <EMAIL_3>.");
        assert_eq!(r.restore(&redacted), text);
        // Across texts: every text is noted before any is redacted.
        let mut r = Redaction::new();
        r.avoid("see <PHONE_1>");
        let other = r.redact("x@y.io +44 20 7946 0958", &scan("x@y.io +44 20 7946 0958"));
        assert_eq!(other, "<EMAIL_1> <PHONE_2>");
        assert_eq!(placeholder_len("<EMAIL_12> rest"), Some(10));
        assert_eq!(placeholder_len("<E_1>"), None, "kinds have at least two letters");
        assert_eq!(placeholder_len("<EMAIL_>"), None);
        assert_eq!(placeholder_len("<email_1>"), None);
    }

    #[test]
    fn stream_restores_placeholders_split_at_every_position() {
        let mut r = Redaction::new();
        let text = "Dear <name>, reply to a@b.io < 5 min; cc c@d.io";
        let redacted = r.redact(text, &scan(text));
        for cut1 in 0..=redacted.len() {
            for cut2 in cut1..=redacted.len() {
                if !redacted.is_char_boundary(cut1) || !redacted.is_char_boundary(cut2) {
                    continue;
                }
                let mut restorer = Restorer::default();
                let mut out = restorer.push(&r, &redacted[..cut1]);
                out.push_str(&restorer.push(&r, &redacted[cut1..cut2]));
                out.push_str(&restorer.push(&r, &redacted[cut2..]));
                out.push_str(&restorer.finish());
                assert_eq!(out, text, "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn held_back_text_that_is_not_a_placeholder_comes_out_at_finish() {
        let mut r = Redaction::new();
        r.redact("a@b.io", &scan("a@b.io"));
        let mut restorer = Restorer::default();
        assert_eq!(restorer.push(&r, "x <EMA"), "x ");
        assert_eq!(restorer.finish(), "<EMA");
    }
}
