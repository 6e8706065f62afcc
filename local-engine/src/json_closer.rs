//! Follows a JSON document as it is generated and knows, at every point, the shortest text that
//! completes it. `response_format: json_object` uses it to end a free-form answer inside
//! `max_tokens`: a grammar keeps the text valid but cannot know the budget, so a model that
//! writes a long object would otherwise be cut mid-value and return JSON nobody can parse.
//!
//! Pure: bytes in, text out. Structure characters are ASCII, so pieces of text split anywhere
//! (even inside a multi-byte character) are followed correctly.

/// What the document needs next, at the innermost open level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing read yet: the document's first value.
    Document,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key string.
    InKey(Escape),
    /// After a key: `:`.
    Colon,
    /// After `:`, or after `,` in an array: a value.
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// Inside a string value.
    InString(Escape),
    /// Inside a number; `true` when it currently ends in a digit.
    InNumber(bool),
    /// Inside `true`, `false` or `null`: the letters still to come.
    InLiteral(&'static str),
    /// After a complete value: `,` or the closing bracket (or the end of the document).
    AfterValue,
}

/// Where a string is in an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and this many hex digits.
    Unicode(u8),
}

/// Tracks a JSON document being generated.
#[derive(Debug, Clone)]
pub(crate) struct JsonCloser {
    /// Open containers, outermost first: `true` for an object.
    open: Vec<bool>,
    expect: Expect,
    /// Text that does not follow JSON was seen: nothing can close it any more.
    broken: bool,
    /// Bytes still to check for a tool call's opening `{"` (2 at the start with
    /// [`JsonCloser::unless_a_call`], 1 after its `{`, 0: no check).
    call_check: u8,
    /// The hex digits read so far of the `\u` escape being written.
    escape_code: u16,
    /// The string's last escape was a high surrogate (`\ud83d`) and its low half has not come
    /// yet: a closing must pair it (strict parsers refuse a lone surrogate).
    after_high_surrogate: bool,
}

impl Default for JsonCloser {
    fn default() -> Self {
        Self { open: Vec::new(), expect: Expect::Document, broken: false, call_check: 0, escape_code: 0, after_high_surrogate: false }
    }
}

const HIGH_SURROGATES: std::ops::RangeInclusive<u16> = 0xD800..=0xDBFF;
const LOW_SURROGATES: std::ops::RangeInclusive<u16> = 0xDC00..=0xDFFF;

impl JsonCloser {
    /// Follows a document unless it opens as a tool call does, `{"` (`JsonClosing::UnlessACall`).
    pub(crate) fn unless_a_call() -> Self {
        Self { call_check: 2, ..Self::default() }
    }

    /// Follows `bytes`, the next piece of the document (UTF-8, possibly split inside a
    /// character: bytes of multi-byte characters only ever occur inside strings).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.broken {
                return;
            }
            match (self.call_check, b) {
                (2, b'{') => self.call_check = 1,
                (1, b'"') => return self.broken = true,
                _ => self.call_check = 0,
            }
            self.step(char::from(b));
        }
    }

    /// A whole value was written at the top level: the document is finished.
    pub(crate) fn is_complete(&self) -> bool {
        !self.broken && self.open.is_empty() && self.expect == Expect::AfterValue
    }

    /// The shortest text that makes what was pushed a complete JSON document; `None` when it
    /// stopped following JSON.
    pub(crate) fn closing(&self) -> Option<String> {
        if self.broken {
            return None;
        }
        let mut out = String::new();
        match self.expect {
            Expect::Document => out.push_str("{}"),
            Expect::KeyOrEnd | Expect::ValueOrEnd | Expect::AfterValue => {}
            Expect::Key => out.push_str("\"\":null"),
            Expect::InKey(escape) => {
                self.close_string(escape, &mut out);
                out.push_str(":null");
            }
            Expect::Colon => out.push_str(":null"),
            Expect::Value => out.push_str("null"),
            Expect::InString(escape) => self.close_string(escape, &mut out),
            Expect::InNumber(ends_in_digit) => {
                if !ends_in_digit {
                    out.push('0');
                }
            }
            Expect::InLiteral(rest) => out.push_str(rest),
        }
        for &object in self.open.iter().rev() {
            out.push(if object { '}' } else { ']' });
        }
        Some(out)
    }

    fn step(&mut self, c: char) {
        match self.expect {
            Expect::InKey(escape) | Expect::InString(escape) => {
                let next = match (escape, c) {
                    // A backslash may start the low half of a surrogate pair; anything else ends
                    // the wait for one.
                    (Escape::None, '\\') => Some(Escape::Backslash),
                    (Escape::Backslash, 'u') => {
                        self.escape_code = 0;
                        Some(Escape::Unicode(0))
                    }
                    (Escape::Unicode(n), c) if c.is_ascii_hexdigit() => {
                        self.escape_code = self.escape_code << 4 | c.to_digit(16).and_then(|d| u16::try_from(d).ok()).unwrap_or(0);
                        if n < 3 {
                            Some(Escape::Unicode(n + 1))
                        } else {
                            let paired = self.after_high_surrogate && LOW_SURROGATES.contains(&self.escape_code);
                            self.after_high_surrogate = !paired && HIGH_SURROGATES.contains(&self.escape_code);
                            Some(Escape::None)
                        }
                    }
                    (Escape::None, '"') => {
                        self.after_high_surrogate = false;
                        None
                    }
                    (Escape::None, c) if c >= ' ' => {
                        self.after_high_surrogate = false;
                        Some(Escape::None)
                    }
                    (Escape::Backslash, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {
                        self.after_high_surrogate = false;
                        Some(Escape::None)
                    }
                    _ => return self.broken = true,
                };
                let in_key = matches!(self.expect, Expect::InKey(_));
                self.expect = match (next, in_key) {
                    (Some(e), true) => Expect::InKey(e),
                    (Some(e), false) => Expect::InString(e),
                    (None, true) => Expect::Colon,
                    (None, false) => Expect::AfterValue,
                };
            }
            Expect::InNumber(_) if c.is_ascii_digit() => self.expect = Expect::InNumber(true),
            Expect::InNumber(_) if matches!(c, '.' | 'e' | 'E' | '+' | '-') => self.expect = Expect::InNumber(false),
            Expect::InNumber(ends_in_digit) => {
                if !ends_in_digit {
                    return self.broken = true;
                }
                self.expect = Expect::AfterValue;
                self.step(c);
            }
            Expect::InLiteral(rest) => match rest.strip_prefix(c) {
                Some("") => self.expect = Expect::AfterValue,
                Some(more) => self.expect = Expect::InLiteral(more),
                None => self.broken = true,
            },
            _ if c.is_ascii_whitespace() => {}
            Expect::Document | Expect::Value | Expect::ValueOrEnd => {
                if c == ']' && self.expect == Expect::ValueOrEnd {
                    self.close(false);
                } else {
                    self.value(c);
                }
            }
            Expect::KeyOrEnd | Expect::Key => match c {
                '"' => self.expect = Expect::InKey(Escape::None),
                '}' if self.expect == Expect::KeyOrEnd => self.close(true),
                _ => self.broken = true,
            },
            Expect::Colon => {
                if c == ':' {
                    self.expect = Expect::Value;
                } else {
                    self.broken = true;
                }
            }
            Expect::AfterValue => match (c, self.open.last()) {
                (',', Some(true)) => self.expect = Expect::Key,
                (',', Some(false)) => self.expect = Expect::Value,
                ('}', Some(true)) => self.close(true),
                (']', Some(false)) => self.close(false),
                _ => self.broken = true,
            },
        }
    }

    /// The first character of a value.
    fn value(&mut self, c: char) {
        self.expect = match c {
            '{' => {
                self.open.push(true);
                Expect::KeyOrEnd
            }
            '[' => {
                self.open.push(false);
                Expect::ValueOrEnd
            }
            '"' => Expect::InString(Escape::None),
            '-' => Expect::InNumber(false),
            '0'..='9' => Expect::InNumber(true),
            't' => Expect::InLiteral("rue"),
            'f' => Expect::InLiteral("alse"),
            'n' => Expect::InLiteral("ull"),
            _ => return self.broken = true,
        };
    }

    fn close(&mut self, object: bool) {
        if self.open.pop() == Some(object) {
            self.expect = Expect::AfterValue;
        } else {
            self.broken = true;
        }
    }
}

impl JsonCloser {
    /// Ends a string that is inside `escape`, pairing a high surrogate left alone.
    fn close_string(&self, escape: Escape, out: &mut String) {
        const LOW_HALF: &str = "\\udc00";
        match escape {
            Escape::None if self.after_high_surrogate => out.push_str(LOW_HALF),
            Escape::None => {}
            Escape::Backslash if self.after_high_surrogate => out.push_str(&LOW_HALF[1..]),
            Escape::Backslash => out.push('n'),
            Escape::Unicode(n) => {
                let missing = 4 * (4 - u32::from(n));
                let written = u32::from(self.escape_code);
                // The digits so far completed with zeros or, in a high surrogate's low slot, into
                // the smallest low half they allow (none: the high half stays alone, as written).
                let low_half = self.after_high_surrogate.then(|| (0xDC00..=0xDFFF).find(|c: &u32| c >> missing == written)).flatten();
                let code = low_half.unwrap_or(written << missing);
                out.push_str(&format!("{code:04x}")[usize::from(n)..]);
                if u16::try_from(code).is_ok_and(|c| HIGH_SURROGATES.contains(&c)) {
                    out.push_str(LOW_HALF);
                }
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::JsonCloser;

    const DOCUMENTS: &[&str] = &[
        r#"{"name": "Tom", "age": 3, "tags": ["grey", "small"], "owner": {"name": "Ann", "since": -2.5e+3}}"#,
        "{\n  \"a\": [1, [2, [true, false, null]], {}],\n  \"b\": \"x\\\"y\\\\z\\u00e9\\n\",\n  \"c\": {\"d\": []}\n}",
        r#"[{"k": "é ü 猫"}, 0, -0.5, 12e4, "\u12ab"]"#,
        r#""just a string""#,
        // A character outside the BMP written as a surrogate pair, in a value and in a key: a cut
        // between its halves must not leave a lone surrogate (strict parsers refuse one).
        r#"{"e": "smile \ud83d\ude00 ok", "k\uD83D\uDE00": ["\ud800\udc00", "\u00e9"]}"#,
        "-12.75E-3",
        "{}",
    ];

    #[test]
    fn every_prefix_of_a_document_closes_into_valid_json() {
        for document in DOCUMENTS {
            for (end, _) in document.char_indices().chain([(document.len(), ' ')]) {
                let prefix = &document[..end];
                let mut closer = JsonCloser::default();
                closer.push(prefix.as_bytes());
                let closing = closer.closing().unwrap_or_else(|| panic!("{prefix:?} was refused"));
                let whole = format!("{prefix}{closing}");
                assert!(serde_json::from_str::<serde_json::Value>(&whole).is_ok(), "{prefix:?} + {closing:?} is not JSON");
            }
        }
    }

    #[test]
    fn unless_a_call_closes_answers_but_not_calls() {
        for piece in [&b"{\n  \"name\": \"To"[..], b"{ \"name\": \"To"] {
            let mut answer = JsonCloser::unless_a_call();
            answer.push(piece);
            assert_eq!(answer.closing().as_deref(), Some("\"}"));
        }
        // A tool call (the grammar opens calls `{"`) is not closed: it stays cut.
        let mut call = JsonCloser::unless_a_call();
        call.push(b"{\"name\":\"get_weather\",\"arguments\":{");
        assert_eq!(call.closing(), None);
        assert!(!call.is_complete());
    }

    #[test]
    fn pieces_split_anywhere_are_followed_the_same() {
        let document = DOCUMENTS[2];
        let mut whole = JsonCloser::default();
        whole.push(document.as_bytes());
        assert!(whole.is_complete());
        let bytes = document.as_bytes();
        for split in 0..bytes.len() {
            let mut pieces = JsonCloser::default();
            pieces.push(&bytes[..split]);
            assert!(!pieces.is_complete());
            pieces.push(&bytes[split..]);
            assert!(pieces.is_complete(), "split at {split}");
        }
    }

    #[test]
    fn the_closing_is_the_shortest_for_common_cuts() {
        let closing = |text: &str| {
            let mut c = JsonCloser::default();
            c.push(text.as_bytes());
            c.closing()
        };
        assert_eq!(closing(r#"{"a": ["b", {"c": "d"#).as_deref(), Some(r#""}]}"#));
        assert_eq!(closing(r#"{"a": tr"#).as_deref(), Some("ue}"));
        assert_eq!(closing(r#"{"a": 1,"#).as_deref(), Some(r#""":null}"#));
        assert_eq!(closing(r#"{"a"#).as_deref(), Some(r#"":null}"#));
        assert_eq!(closing(r#"{"a": "x\u0"#).as_deref(), Some(r#"000"}"#));
        assert_eq!(closing(r#"{"a": "x\ud83d"#).as_deref(), Some(r#"\udc00"}"#));
        assert_eq!(closing(r#"{"a": "x\ud8"#).as_deref(), Some(r#"00\udc00"}"#));
        assert_eq!(closing(r#"{"a": "x\ud83d\ude"#).as_deref(), Some(r#"00"}"#));
        assert_eq!(closing(r#"{"a": 1.5}"#).as_deref(), Some(""));
        assert_eq!(closing("").as_deref(), Some("{}"));
    }

    #[test]
    fn text_that_is_not_json_cannot_be_closed() {
        for text in ["Sure! {", r#"{"a" 1"#, "[1}", "{]", r#"{"a": tx"#, "1 2", "-x", "\"a\u{1}\""] {
            let mut c = JsonCloser::default();
            c.push(text.as_bytes());
            assert_eq!(c.closing(), None, "{text:?}");
            assert!(!c.is_complete());
        }
    }
}
