//! The PII scanner: one multi-pattern regex pass finds candidates, then each candidate must pass
//! its kind's check digits or structural rules (see [`checks`]) and stand alone (not glued to a
//! longer word or number). Findings carry kinds and byte spans, never copies of the values.

mod checks;
mod normalize;
mod phone;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex_automata::meta::Regex;
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::{Anchored, Input, PatternID};

/// A kind of personal or secret data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    /// E-mail address.
    Email,
    /// Phone number (US, UK, DE, FR, IT, ES and international `+`/`00` forms).
    Phone,
    /// Payment card number (Luhn-checked, known issuer).
    CreditCard,
    /// IBAN (mod-97 checked, registered length).
    Iban,
    /// US Social Security number.
    UsSsn,
    /// UK National Insurance number.
    UkNino,
    /// French INSEE/NIR (key checked).
    FrNir,
    /// Italian codice fiscale (check letter verified).
    ItCodiceFiscale,
    /// Spanish DNI/NIF (check letter verified).
    EsDni,
    /// Spanish NIE (check letter verified).
    EsNie,
    /// IPv4 or IPv6 address.
    IpAddress,
    /// API keys, access keys, private-key headers, JWTs; a password or token written after its
    /// name (`password: …`, `DB_PASSWORD=…`, `Authorization: Bearer …`) or in a URL (`user:pass@`).
    Secret,
    /// Content that could not be scanned (images, files, audio): treated as PII (fail closed).
    Unscannable,
}

impl PiiKind {
    /// The name used in `/v1/route`, the audit log and placeholders (lower-case).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::CreditCard => "credit_card",
            Self::Iban => "iban",
            Self::UsSsn => "us_ssn",
            Self::UkNino => "uk_nino",
            Self::FrNir => "fr_nir",
            Self::ItCodiceFiscale => "it_codice_fiscale",
            Self::EsDni => "es_dni",
            Self::EsNie => "es_nie",
            Self::IpAddress => "ip_address",
            Self::Secret => "secret",
            Self::Unscannable => "unscannable",
        }
    }
}

/// One finding: a kind and where it is (byte offsets into the scanned text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiiSpan {
    /// What was found.
    pub kind: PiiKind,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
}

/// Kinds and counts of `spans`, for `/v1/route` and the router's privacy signal.
pub fn pii_counts(spans: &[PiiSpan]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for s in spans {
        *counts.entry(s.kind.as_str().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// How a candidate's end may move.
#[derive(Clone, Copy)]
enum Shape {
    /// The regex match is the value.
    Exact,
    /// Digit groups: the value may end at an earlier space between groups.
    DigitGroups,
    /// An IBAN: exactly the registered length for its country, spaces not counted.
    Iban,
    /// A value written after its name and a `:`/`=` or a space (`password: …`, `"token": "…"`,
    /// `Bearer …`): the value alone, from the regex's last character over [`secret_char`]s:
    /// checked on its first `max` (at least `min`), found to its end.
    Labelled { min: usize, max: usize },
    /// A URL's `://user:password@`: the user and password alone.
    UserInfo,
}

/// A candidate's check: its text, and the text just before it (up to [`CONTEXT_BYTES`]).
type Check = fn(&str, &str) -> bool;

/// How much text before a candidate its check may look at (for context words).
const CONTEXT_BYTES: usize = 40;

/// A candidate pattern, its kind, its check and how its end is found.
struct Pattern {
    kind: PiiKind,
    regex: &'static str,
    check: Check,
    shape: Shape,
    /// Numbers glued to a letter, `#`, or a `-`/`.`/`/` run are identifiers, not PII.
    numeric: bool,
    /// A network address: a `:` or `/` beside it (`ip:`, `http://`, a `:port`, a `/24` prefix,
    /// a path) does not glue it to anything.
    address: bool,
}

const fn pat(kind: PiiKind, regex: &'static str, check: Check, shape: Shape, numeric: bool) -> Pattern {
    Pattern { kind, regex, check, shape, numeric, address: false }
}

const fn address(regex: &'static str, check: Check) -> Pattern {
    Pattern { kind: PiiKind::IpAddress, regex, check, shape: Shape::Exact, numeric: true, address: true }
}

const fn any(_: &str, _: &str) -> bool {
    true
}

/// Every repetition in the numeric patterns is bounded a little above the longest value of its
/// kind (19 card digits, 15 phone digits, 34 IBAN characters, 8 IPv6 groups, an email's 64-character
/// local part): an unbounded one
/// ran each candidate to the end of a long run of numbers (a table of `0.5 0.5 …`), and a scan
/// that tries every start in such a run then took time cubic in its length.
///
/// In priority order: at one start position, the first pattern that matches is tried first; if
/// its check fails, the later ones are tried there before moving on.
static PATTERNS: &[Pattern] = &[
    pat(PiiKind::Secret, r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----", any, Shape::Exact, false),
    pat(PiiKind::Secret, r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}", any, Shape::Exact, false),
    pat(PiiKind::Secret, r"sk-[A-Za-z0-9_-]{20,}", checks::keyed, Shape::Exact, false),
    pat(PiiKind::Secret, r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}", checks::keyed, Shape::Exact, false),
    pat(PiiKind::Secret, r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[rs]k_live_[0-9A-Za-z]{20,})", any, Shape::Exact, false),
    // Tokens with a fixed prefix (Hugging Face, GitLab, npm, Stripe test keys, Telegram bots, also
    // as the API's URLs write them: `/bot123…:AA…/sendMessage`) and webhook URLs that carry their
    // own secret.
    pat(PiiKind::Secret, r"(?:hf_|glpat-|npm_|[rs]k_test_)[A-Za-z0-9_-]+|(?:bot)?[0-9]+:AA[A-Za-z0-9_-]+", checks::prefixed_token, Shape::Exact, false),
    pat(PiiKind::Secret, r"hooks\.slack\.com/services/[A-Za-z0-9/]+|discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+", any, Shape::Exact, false),
    // Named secrets (`password: …`, `DB_PASS=…`, `"api_key": "…"`, `aws_secret_access_key = …`,
    // `setPassword("…")`, `Authorization: Basic …`, `Bearer …`) and a URL's `user:password@`: each regex starts at
    // the name (or `://`) with no run of word characters before it, and the named ones end at the
    // value's first character, the shape finding the rest. A leading `[A-Za-z]*`, a counted
    // repetition or a Unicode class in the shared automaton made every scan four times slower.
    pat(PiiKind::Secret, concat!(r"(?i-u:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key(?:[_-]?base)?)?|token|api[_-]?key|access[_-]?key|private[_-]?key|app[_-]?key|encryption[_-]?key|account[_-]?key)", r#"["']?[ \t]*[:=(][ \t]*["']?[!#-%(-+\--:<-_a-~]"#), checks::named_secret, Shape::Labelled { min: 6, max: 128 }, false),
    pat(PiiKind::Secret, r"(?i-u:password|passwd)[ \t]+[!#-%(-+\--:<-_a-~]", checks::named_secret, Shape::Labelled { min: 6, max: 128 }, false),
    pat(PiiKind::Secret, r#"(?i-u:authorization)["']?[ \t]*[:=][ \t]*["']?(?i-u:basic|token|bearer)[ \t]+[!#-%(-+\--:<-_a-~]"#, checks::named_secret, Shape::Labelled { min: 8, max: 512 }, false),
    pat(PiiKind::Secret, r"(?i-u:bearer)[ \t]+[!#-%(-+\--:<-_a-~]", checks::named_secret, Shape::Labelled { min: 16, max: 512 }, false),
    pat(PiiKind::Secret, r"://[A-Za-z0-9._~%!$&'()*+,;=-]*:[A-Za-z0-9._~%!$&'()*+,;=:@-]+@", checks::url_password, Shape::UserInfo, false),
    // A password beside its user on a command line or in code (`curl -u user:pass`,
    // `--user=user:pass`, `auth=("user", "pass")`, `HTTPBasicAuth('user', 'pass')`) or glued to
    // `-p` (`mysql -pSECRET`).
    pat(PiiKind::Secret, r#"[ \t](?:-u|--user)(?:[ \t]+|=)["']?[!#-&(-9;-~]*:[!#-%(-+\--:<-_a-~]"#, checks::user_password, Shape::Labelled { min: 6, max: 128 }, false),
    pat(PiiKind::Secret, r#"(?i-u:auth)[ \t]*=?[ \t]*\([ \t]*["'][ !#-&(-~]*["'][ \t]*,[ \t]*["'][!#-%(-+\--:<-_a-~]"#, checks::user_password, Shape::Labelled { min: 6, max: 128 }, false),
    pat(PiiKind::Secret, r"[ \t]-p[!#-%(-+\--:<-_a-~]", checks::glued_password, Shape::Labelled { min: 6, max: 128 }, false),
    pat(PiiKind::Secret, r"SG\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", checks::sendgrid_key, Shape::Exact, false),
    // An apostrophe may sit inside a local part (`mary.o'connor@…`), not at its start.
    pat(PiiKind::Email, r"[\p{L}\p{N}._%+-][\p{L}\p{N}._%+'-]{0,63}@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.[A-Za-z]{2,}", checks::email, Shape::Exact, false),
    pat(PiiKind::Iban, r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,32}", |s, _| checks::iban(s), Shape::Iban, false),
    pat(PiiKind::ItCodiceFiscale, r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-EHLMPR-T][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]", |s, _| checks::it_codice_fiscale(s), Shape::Exact, false),
    pat(PiiKind::UkNino, r"[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]", |s, _| checks::uk_nino(s), Shape::Exact, false),
    pat(PiiKind::EsNie, r"[XYZ]-?[0-9]{7}-?[A-Z]", |s, _| checks::es_nie(s), Shape::Exact, false),
    pat(PiiKind::CreditCard, r"(?-u:\b)[0-9](?:[ .-]?[0-9]){11,23}", |s, _| checks::payment_card(s), Shape::DigitGroups, true),
    pat(PiiKind::FrNir, r"(?-u:\b)[12] ?[0-9]{2} ?[0-9]{2} ?(?:[0-9]{2}|2[AB]) ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}", |s, _| checks::fr_nir(s), Shape::Exact, true),
    pat(PiiKind::UsSsn, r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}", |s, _| checks::us_ssn(s), Shape::Exact, true),
    pat(PiiKind::EsDni, r"(?-u:\b)[0-9]{8}-?[A-Z]", |s, _| checks::es_dni(s), Shape::Exact, true),
    pat(PiiKind::IpAddress, r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}", |s, _| checks::ipv6(s), Shape::Exact, false),
    address(r"(?-u:\b)[0-9]{1,3}(?:\.[0-9]{1,3}){3}", checks::ipv4),
    pat(PiiKind::Phone, phone::REGEX, phone::is_phone, Shape::DigitGroups, true),
];

/// The compiled scanner. Build once ([`scanner`]) and share: scanning takes `&self`.
pub struct PiiScanner {
    /// All patterns at once: finds the next candidate.
    regex: Regex,
    /// Each pattern alone, for anchored retries at a candidate's start (a multi-pattern regex
    /// anchored to one pattern falls back to a slow engine).
    each: Vec<Regex>,
}

impl PiiScanner {
    fn new() -> Self {
        let regexes: Vec<&str> = PATTERNS.iter().map(|p| p.regex).collect();
        // The patterns are constants covered by tests; failing to compile them is a bug.
        // Only the overall match is read: implicit captures keep the automata small. A larger lazy-DFA
        // cache keeps the multi-pattern automaton from being rebuilt mid-scan.
        let build = |patterns: &[&str]| {
            Regex::builder()
                .configure(Regex::config().which_captures(WhichCaptures::Implicit).hybrid_cache_capacity(16 << 20))
                .build_many(patterns)
                .expect("PII patterns compile")
        };
        let regex = build(&regexes);
        let each = regexes.iter().map(|r| build(&[*r])).collect();
        Self { regex, each }
    }

    /// Every finding in `text`, in order, non-overlapping. Digits of other scripts, Unicode
    /// spaces and dashes count as their ASCII forms, and invisible characters (soft hyphens,
    /// zero-width spaces) as nothing; spans are offsets into `text` as given.
    pub fn scan(&self, text: &str) -> Vec<PiiSpan> {
        match normalize::folded(text) {
            None => self.scan_folded(text),
            Some(folded) => self
                .scan_folded(&folded.text)
                .into_iter()
                .map(|s| {
                    let (start, end) = folded.original(s.start, s.end);
                    PiiSpan { kind: s.kind, start, end }
                })
                .collect(),
        }
    }

    fn scan_folded(&self, text: &str) -> Vec<PiiSpan> {
        let mut found = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let Some(m) = self.regex.search(&Input::new(text).range(at..)) else { break };
            let start = m.start();
            let accepted = Self::accept(text, m.pattern(), start, m.end()).or_else(|| self.retry(text, m.pattern(), start));
            match accepted {
                Some(span) => {
                    found.push(span);
                    at = span.end;
                }
                // Every start inside this word fails the left-boundary test: skip the word.
                None => at = skip_word(text, start),
            }
        }
        found
    }

    /// After `failed` matched at `start` but did not pass, the first lower-priority pattern that
    /// matches there and passes. A start glued to a word fails every pattern: no search then.
    fn retry(&self, text: &str, failed: PatternID, start: usize) -> Option<PiiSpan> {
        if glued_left(text, start, None, false, false, false) {
            return None;
        }
        (failed.as_usize() + 1..PATTERNS.len()).filter(|&pid| PATTERNS[pid].address || !glued_left(text, start, None, PATTERNS[pid].numeric, false, stands_alone(PATTERNS[pid].kind))).find_map(|pid| {
            let m = self.each[pid].search(&Input::new(text).range(start..).anchored(Anchored::Yes))?;
            Self::accept(text, PatternID::new(pid).ok()?, start, m.end())
        })
    }

    /// The finding for pattern `pid` matched at `start..end`, if it passes its check.
    fn accept(text: &str, pid: PatternID, start: usize, end: usize) -> Option<PiiSpan> {
        let p = &PATTERNS[pid.as_usize()];
        let strong = stands_alone(p.kind);
        // A secret's name may be glued to a word (`DB_PASSWORD`, `https://`): only its value is a finding.
        let named = matches!(p.shape, Shape::Labelled { .. } | Shape::UserInfo);
        if !named && glued_left(text, start, Some(&text[start..end]), p.numeric, p.address, strong) {
            return None;
        }
        let mut from = start.saturating_sub(CONTEXT_BYTES);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let before = &text[from..start];
        let fits = |end: usize| !glued_right(text, end, &text[start..end], p.numeric, p.address, strong) && (p.check)(&text[start..end], before);
        let end = match p.shape {
            // The regex delimits the value; only it is the secret (the name stays readable).
            Shape::Labelled { min, max } => {
                // Checked on its first `max` characters (the name before it, for its check); once
                // it passes, the whole run is the finding: a longer token must not leak its tail.
                let from = end - 1;
                let run = |limit: usize| from + text.as_bytes()[from..].iter().take(limit).take_while(|&&b| secret_char(b)).count();
                let head = run(max);
                let name = &text[start..from];
                let found = head - from >= min && (p.check)(&text[from..head], name);
                return found.then(|| PiiSpan { kind: p.kind, start: from, end: if head - from < max { head } else { run(usize::MAX) } });
            }
            Shape::UserInfo => {
                let from = start + "://".len();
                let to = end - 1;
                return (from < to && (p.check)(&text[from..to], before)).then_some(PiiSpan { kind: p.kind, start: from, end: to });
            }
            Shape::Exact => fits(end).then_some(end)?,
            Shape::DigitGroups => {
                // Longest first: the regex is greedy and may have run into a following number.
                // A shorter end must not cut a sequence printed in short groups (`9400 9070 8372 1234 56`).
                // No value of these kinds has more than MAX_GROUPED_DIGITS digits: longer ends are not tried.
                let end = end.min(after_digits(text, start, MAX_GROUPED_DIGITS));
                let mut ends = (start + 1..=end).rev().filter(|&e| e == end || (text.as_bytes()[e] == b' ' && !(ends_in_short_group(&text[start..e]) && short_group_at(text, e + 1))));
                ends.find(|&e| text.as_bytes()[e - 1].is_ascii_digit() && fits(e))?
            }
            Shape::Iban => {
                let len = checks::iban_length(&text.get(start..start + 2)?.to_ascii_uppercase())?;
                let mut seen = 0;
                let e = text[start..end].bytes().position(|b| {
                    seen += usize::from(b != b' ');
                    seen == len
                })? + start + 1;
                fits(e).then_some(e)?
            }
        };
        Some(PiiSpan { kind: p.kind, start, end })
    }
}

impl std::fmt::Debug for PiiScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiScanner").field("patterns", &PATTERNS.len()).finish()
    }
}

static SCANNER: LazyLock<PiiScanner> = LazyLock::new(PiiScanner::new);

/// The shared scanner (compiled on first use; call once at start-up to pay that early).
pub fn scanner() -> &'static PiiScanner {
    &SCANNER
}

/// Scans `text` with the shared scanner.
pub fn scan(text: &str) -> Vec<PiiSpan> {
    SCANNER.scan(text)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// True when the candidate at `start` (`candidate`, when known) continues a word (or, for
/// numbers, an identifier such as `ORD-2024…`, `v1.2…`, `#4839…`, or a decimal's digits).
fn glued_left(text: &str, start: usize, candidate: Option<&str>, numeric: bool, address: bool, strong: bool) -> bool {
    let mut before = text[..start].chars().rev();
    match before.next() {
        Some(c) if is_word_char(c) => true,
        Some(':' | '/') if address => false,
        Some('#') if numeric => true,
        // `9400 9070 8372 …`: the third or later group of a digit sequence printed in short groups.
        Some(' ') if numeric => continues_digit_groups(text, start),
        // A CSV field or a `key:value` (`Bob,123-45-6789`, `card:4111…`) starts a value; after a
        // digit, plain digits are a decimal's or a time's (`3,14159…`, `10:20`) — unless the kind's
        // own check (check digits, a fixed shape) tells a value from such a number. A value with
        // its own shape (`+1 415…`, `(415) 555…`, `203.0.113.7`) is no decimal's tail.
        Some(',' | ':') if numeric => {
            !strong && before.next().is_some_and(|c| c.is_ascii_digit()) && candidate.is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
        }
        Some('-' | '.' | '/') if numeric => before.next().is_some_and(is_word_char),
        _ => false,
    }
}

/// Kinds whose check tells a value from a number that merely continues another (Luhn and issuer
/// prefixes, check letters and keys, the SSN's fixed shape): found after a `,` or `:` even
/// behind a digit (`1,4111…` in a CSV row), and before a `:`.
fn stands_alone(kind: PiiKind) -> bool {
    matches!(kind, PiiKind::CreditCard | PiiKind::UsSsn | PiiKind::EsDni | PiiKind::FrNir)
}

/// True when `text[at..]` starts with a group of 1–4 digits that ends the text or is followed by
/// a space (another group of the same sequence).
fn short_group_at(text: &str, at: usize) -> bool {
    let digits = text.as_bytes()[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=4).contains(&digits) && matches!(text.as_bytes().get(at + digits), None | Some(b' ' | b'\n'))
}

/// True when the last digit group of `s` has 1–4 digits.
fn ends_in_short_group(s: &str) -> bool {
    (1..=4).contains(&s.bytes().rev().take_while(u8::is_ascii_digit).count())
}

/// True when `text[..start]` ends with `<digit> <1–4 digits> `.
fn continues_digit_groups(text: &str, start: usize) -> bool {
    let b = text.as_bytes();
    let mut i = start - 1; // the space
    let mut group = 0;
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
        group += 1;
    }
    (1..=4).contains(&group) && i >= 2 && b[i - 1] == b' ' && b[i - 2].is_ascii_digit()
}

/// True when the text after `end` continues `candidate` (a letter or digit, or a `-`/`.`/`/`
/// followed by one: a longer number, a date, a version; a `:` and a digit: a time; a `,` and a
/// digit after a plain number: its decimals, `4155552671,5` or `421.884.663,74`). Otherwise a
/// `,` ends it: the next field of a CSV row or a list.
fn glued_right(text: &str, end: usize, candidate: &str, numeric: bool, address: bool, strong: bool) -> bool {
    let mut after = text[end..].chars();
    match after.next() {
        Some(c) if is_word_char(c) => true,
        Some(':' | '/') if address => false,
        Some(':') if numeric => !strong && after.next().is_some_and(|c| c.is_ascii_digit()),
        Some(',') if numeric => {
            !strong && after.next().is_some_and(|c| c.is_ascii_digit()) && candidate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        }
        Some('-' | '.' | '/') if numeric => after.next().is_some_and(|c| c.is_ascii_alphanumeric()),
        Some('@') => true,
        _ => false,
    }
}

/// A character of a named secret's value: printable ASCII but for quotes, `` ` ``, `,`, `;` and
/// `&` (which end a value in JSON, code, a CSV row or a query string).
fn secret_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'`' | b',' | b';' | b'&')
}

/// More digits than a card (19) or an international phone number with its extension can have.
const MAX_GROUPED_DIGITS: usize = 24;

/// The offset just past the `n`-th digit from `start` (the text's end if it has fewer).
fn after_digits(text: &str, start: usize, n: usize) -> usize {
    let mut seen = 0;
    for (i, b) in text.as_bytes()[start..].iter().enumerate() {
        seen += usize::from(b.is_ascii_digit());
        if seen == n {
            return start + i + 1;
        }
    }
    text.len()
}

/// The first byte after the word that starts at `start` (at least one character on).
fn skip_word(text: &str, start: usize) -> usize {
    let mut chars = text[start..].char_indices();
    let first = chars.next().map_or(1, |(_, c)| c.len_utf8());
    text[start..]
        .char_indices()
        .skip(1)
        .find(|(_, c)| !is_word_char(*c))
        .map_or(text.len(), |(i, _)| start + i)
        .max(start + first)
}

#[cfg(test)]
mod tests;
