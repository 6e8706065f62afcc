//! The text the patterns see: people write the same number with other digits, spaces and
//! dashes (`０６ １２`, `06 12` with no-break spaces, `415–555–0132` after autocorrect) and hide
//! characters in it (soft hyphens, zero-width spaces). The scanner matches on a folded copy and
//! maps its findings back to the original bytes, so redaction replaces what was written.

/// The folded copy of `text` and, for each of its bytes, the original span of the character it
/// came from; `None` when folding changes nothing (ASCII text without tabs or `%40`, the common
/// case, costs two byte scans).
pub(super) fn folded(text: &str) -> Option<Folded> {
    if !text.bytes().any(|b| b >= 0x80 || b == b'\t') && !text.contains("%40") {
        return None;
    }
    let mut out = Folded { text: String::with_capacity(text.len()), starts: Vec::with_capacity(text.len()), ends: Vec::with_capacity(text.len()) };
    let mut changed = false;
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        let end = at + c.len_utf8();
        // A URL-encoded `@` (`jane%40example.com` in a pasted link or query string).
        if c == '%' && text[end..].starts_with("40") {
            chars.nth(1);
            changed = true;
            out.push('@', at, at + 3);
            continue;
        }
        match fold(c) {
            Fold::Keep => out.push(c, at, end),
            Fold::Drop => changed = true,
            Fold::To(to) => {
                changed = true;
                out.push(to, at, end);
            }
        }
    }
    changed.then_some(out)
}

/// A folded text and where each of its bytes came from.
pub(super) struct Folded {
    pub(super) text: String,
    // u32: request bodies are far below 4 GiB, and these are 8 bytes per byte of text.
    starts: Vec<u32>,
    ends: Vec<u32>,
}

impl Folded {
    fn push(&mut self, c: char, start: usize, end: usize) {
        self.text.push(c);
        let (start, end) = (u32::try_from(start).unwrap_or(u32::MAX), u32::try_from(end).unwrap_or(u32::MAX));
        for _ in 0..c.len_utf8() {
            self.starts.push(start);
            self.ends.push(end);
        }
    }

    /// The original byte range of the folded range `start..end` (non-empty, on char boundaries).
    pub(super) fn original(&self, start: usize, end: usize) -> (usize, usize) {
        (self.starts[start] as usize, self.ends[end - 1] as usize)
    }
}

enum Fold {
    Keep,
    Drop,
    To(char),
}

fn fold(c: char) -> Fold {
    let offset = |base: char, to: u8| Fold::To(char::from(to + u8::try_from(u32::from(c) - u32::from(base)).unwrap_or(0)));
    match c {
        // Digits of other scripts: full-width, Arabic-Indic, Eastern Arabic-Indic, Devanagari, Bengali.
        '０'..='９' => offset('０', b'0'),
        '\u{0660}'..='\u{0669}' => offset('\u{0660}', b'0'),
        '\u{06F0}'..='\u{06F9}' => offset('\u{06F0}', b'0'),
        '\u{0966}'..='\u{096F}' => offset('\u{0966}', b'0'),
        '\u{09E6}'..='\u{09EF}' => offset('\u{09E6}', b'0'),
        // Full-width Latin letters and the signs numbers and addresses are written with.
        'Ａ'..='Ｚ' => offset('Ａ', b'A'),
        'ａ'..='ｚ' => offset('ａ', b'a'),
        '＠' => Fold::To('@'),
        '．' => Fold::To('.'),
        '＋' => Fold::To('+'),
        '（' => Fold::To('('),
        '）' => Fold::To(')'),
        '＿' => Fold::To('_'),
        // Spaces: tab, no-break, narrow no-break, figure, thin and the other fixed-width spaces.
        '\t' | '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => Fold::To(' '),
        // Dashes and minus signs (autocorrect turns `-` into these).
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => Fold::To('-'),
        // Typographic apostrophes (`o’connor@…`).
        '\u{2019}' | '\u{02BC}' => Fold::To('\''),
        // Invisible: soft hyphen, zero-width space/joiners, word joiner, byte-order mark.
        '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => Fold::Drop,
        _ => Fold::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::folded;

    #[test]
    fn plain_ascii_is_not_copied() {
        assert!(folded("call 415-555-0132 now").is_none());
        assert!(folded("déjà vu").is_none(), "nothing to fold");
    }

    #[test]
    fn a_url_encoded_at_sign_is_folded_to_the_whole_escape() {
        let text = "see https://x.test/?to=jane.doe%40example.com&n=50%";
        let f = folded(text).expect("folded");
        assert_eq!(f.text, "see https://x.test/?to=jane.doe@example.com&n=50%");
        let start = f.text.find("jane").unwrap();
        let end = f.text.find("&n").unwrap();
        let (s, e) = f.original(start, end);
        assert_eq!(&text[s..e], "jane.doe%40example.com");
        assert!(folded("100% sure, 40%").is_none(), "nothing to fold");
    }

    #[test]
    fn folded_findings_map_back_to_the_original_bytes() {
        let text = "tel\u{00A0}０６\u{202F}12–34\u{00AD}56 ok";
        let f = folded(text).expect("folded");
        assert_eq!(f.text, "tel 06 12-3456 ok");
        let start = f.text.find("06").unwrap();
        let end = f.text.find(" ok").unwrap();
        let (s, e) = f.original(start, end);
        assert_eq!(&text[s..e], "０６\u{202F}12–34\u{00AD}56");
    }
}
