/// Turns a stream of token byte pieces into whole UTF-8 characters.
///
/// A token may end in the middle of a multi-byte character; its tail waits for the next token.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Appends `bytes` and returns every complete character now available.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // valid_up_to marks a char boundary, so this slice is valid UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never become valid: replace them, go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the text: only the start of a character can be left, and it is dropped (the
    /// generation was cut inside it), so the text never ends in a replacement character that
    /// the model did not write.
    pub fn finish(&mut self) -> String {
        self.pending.clear();
        String::new()
    }
}

/// Releases generated text while watching for stop strings: text that could be the start of a
/// stop string is held back until it is known not to be one, so a stop string never reaches the
/// client, even when it spans tokens.
#[derive(Debug)]
pub struct TextAssembler {
    stops: Vec<String>,
    held: String,
    decoder: Utf8Decoder,
    /// Until the answer's first two characters show whether it is a tool call (`{"`): then
    /// the stops are dropped.
    call_undecided: bool,
}

/// What [`TextAssembler::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Assembled {
    /// Text safe to send now.
    pub text: String,
    /// A stop string was reached; `text` ends just before it.
    pub stopped: bool,
}

impl TextAssembler {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            decoder: Utf8Decoder::default(),
            call_undecided: false,
        }
    }

    /// Stops apply to a text answer only: an answer that opens `{"` is a tool call, never cut.
    #[must_use]
    pub fn sparing_calls(mut self, spare: bool) -> Self {
        self.call_undecided = spare && !self.stops.is_empty();
        self
    }

    /// Adds a token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Assembled {
        let piece = self.decoder.push(bytes);
        self.held.push_str(&piece);
        if self.call_undecided {
            let mut opening = self.held.chars();
            match (opening.next(), opening.next()) {
                // Held until known (a stop could match the opening itself).
                (None, _) | (Some('{'), None) => return Assembled { text: String::new(), stopped: false },
                (Some('{'), Some('"')) => self.stops.clear(),
                _ => {}
            }
            self.call_undecided = false;
        }
        // A stop longer than the held text cannot be in it; skipping it spares building a searcher
        // as long as the stop for every token (a client may send stops of a megabyte).
        if let Some(at) = self.stops.iter().filter(|s| s.len() <= self.held.len()).filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Assembled { text, stopped: true };
        }
        let keep = self.longest_stop_prefix_suffix();
        let release = self.held.len() - keep;
        let text = self.held[..release].to_owned();
        self.held.drain(..release);
        Assembled { text, stopped: false }
    }

    /// Releases everything held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&self.decoder.finish());
        out
    }

    /// Length in bytes of the longest suffix of `held` that starts some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().min(self.held.len());
            for len in (best + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_split_across_pieces_come_out_whole() {
        let bytes = "héllo 🌍!".as_bytes();
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for b in bytes {
            let piece = d.push(std::slice::from_ref(b));
            assert!(!piece.contains(char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        assert_eq!(out + &d.finish(), "héllo 🌍!");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "", "a character cut by the end of the text is dropped");
    }

    #[test]
    fn stop_string_spanning_pieces_is_not_released() {
        let mut a = TextAssembler::new(&["END".to_owned()]);
        let mut out = String::new();
        for piece in ["Hello E", "N", "D tail"] {
            let r = a.push(piece.as_bytes());
            out.push_str(&r.text);
            if r.stopped {
                assert_eq!(out, "Hello ");
                return;
            }
        }
        panic!("stop string not detected");
    }

    #[test]
    fn near_miss_is_released_when_it_diverges() {
        let mut a = TextAssembler::new(&["END".to_owned()]);
        assert_eq!(a.push(b"x EN").text, "x ");
        let r = a.push(b"Oy");
        assert!(!r.stopped);
        assert_eq!(r.text, "ENOy");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_held_text_flushes_at_end() {
        let mut a = TextAssembler::new(&["bb".to_owned(), "a".to_owned()]);
        let r = a.push(b"xxbba");
        assert!(r.stopped);
        assert_eq!(r.text, "xx");
        let mut b = TextAssembler::new(&["stop".to_owned()]);
        assert_eq!(b.push(b"sto").text, "");
        assert_eq!(b.finish(), "sto");
    }

    #[test]
    fn a_tool_call_is_never_cut_by_a_stop_string_but_a_text_answer_is() {
        let stops = ["Paris".to_owned(), "{".to_owned()];
        let mut call = TextAssembler::new(&stops).sparing_calls(true);
        let mut out = String::new();
        for piece in ["{", "\"name\":\"w\",\"arguments\":{\"city\":\"", "Paris\"}}"] {
            let a = call.push(piece.as_bytes());
            assert!(!a.stopped, "{piece}");
            out.push_str(&a.text);
        }
        out.push_str(&call.finish());
        assert_eq!(out, "{\"name\":\"w\",\"arguments\":{\"city\":\"Paris\"}}");
        let mut text = TextAssembler::new(&stops).sparing_calls(true);
        assert_eq!(text.push(b"In Paris"), Assembled { text: "In ".into(), stopped: true });
        // A JSON answer beside tools opens `{` and whitespace: its stops apply.
        let mut json = TextAssembler::new(&["Paris".to_owned()]).sparing_calls(true);
        assert_eq!(json.push(b"{ \"city\": \"Paris"), Assembled { text: "{ \"city\": \"".into(), stopped: true });
    }
}
