//! Check digits and structural rules that turn a regex candidate into a finding. Each function
//! takes the candidate's text and says whether it is a valid value of its kind.

/// ASCII digits of `s`, ignoring separators.
fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.bytes().filter(u8::is_ascii_digit).map(|b| u32::from(b - b'0'))
}

/// Luhn (mod 10) over the digits of `s`.
pub fn luhn(s: &str) -> bool {
    let ds: Vec<u32> = digits(s).collect();
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    !ds.is_empty() && sum.is_multiple_of(10)
}

/// A payment card number: a known issuer prefix with one of its lengths, Luhn-valid, and
/// either unseparated or printed in the groups cards use (4-4-4-4…, Amex 4-6-5, Diners 4-6-4).
pub fn payment_card(s: &str) -> bool {
    let ds: String = s.chars().filter(char::is_ascii_digit).collect();
    let n = ds.len();
    if !(12..=19).contains(&n) || !luhn(&ds) || !card_grouping(s) {
        return false;
    }
    let prefix = |k: usize| ds[..k].parse::<u32>().unwrap_or(0);
    // Issuer identification ranges and lengths of the networks in use: a Luhn-valid order
    // number outside them is not a card.
    let visa = ds.starts_with('4') && matches!(n, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4))) && n == 16;
    let amex = matches!(prefix(2), 34 | 37) && n == 15;
    let diners = ((300..=305).contains(&prefix(3)) || matches!(prefix(2), 36 | 38 | 39)) && (14..=19).contains(&n);
    let discover = (prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3))) && (16..=19).contains(&n);
    let jcb = (prefix(2) == 35 && (16..=19).contains(&n)) || (matches!(prefix(4), 1800 | 2131) && n == 15);
    let unionpay = prefix(2) == 62 && (16..=19).contains(&n);
    let maestro = (matches!(prefix(4), 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763 | 604 | 6390)
        || (56..=58).contains(&prefix(2)))
        && (12..=19).contains(&n);
    visa || mastercard || amex || diners || discover || jcb || unionpay || maestro
}

/// Digit groups of a card as printed: none, fours (4-4-4-x, 4-4-4-4, 4-4-4-4-3, 4-4-5), 4-6-5 or 4-6-4.
fn card_grouping(s: &str) -> bool {
    let groups: Vec<usize> = s.split([' ', '-', '.']).map(str::len).collect();
    match groups.as_slice() {
        [_] | [4, 6 | 4, 5 | 4] | [4, 4, 4, 4] | [4, 4, 4, 4, 3] => true,
        [4, 4, 4, last] => (1..=4).contains(last),
        _ => false,
    }
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16), ("BG", 22),
    ("BH", 22), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22), ("CY", 28), ("CZ", 24), ("DE", 22),
    ("DK", 18), ("DO", 28), ("EE", 20), ("EG", 29), ("ES", 24), ("FI", 18), ("FO", 18), ("FR", 27),
    ("GB", 22), ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28),
    ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30), ("KZ", 20),
    ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21), ("LY", 25), ("MC", 27),
    ("MD", 24), ("ME", 22), ("MK", 19), ("MR", 27), ("MT", 31), ("MU", 30), ("NL", 18), ("NO", 15),
    ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("SA", 24),
    ("SC", 31), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("ST", 25), ("SV", 28), ("TL", 23),
    ("TN", 24), ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
];

/// The registered IBAN length for `country`.
pub fn iban_length(country: &str) -> Option<usize> {
    IBAN_LENGTHS.iter().find(|(c, _)| *c == country).map(|(_, n)| *n)
}

/// An IBAN (spaces allowed): registered length for its country and mod-97 = 1.
pub fn iban(s: &str) -> bool {
    // Written in lower case too (`de89 3704 …`).
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).map(|b| b.to_ascii_uppercase()).collect();
    if compact.len() < 15 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let Ok(country) = std::str::from_utf8(&compact[..2]) else { return false };
    if iban_length(country) != Some(compact.len()) {
        return false;
    }
    // Move the first four characters to the end, letters become 10..35, then mod 97.
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// A US SSN `AAA-GG-SSSS`: area not 000, 666 or 9xx; group and serial not zero.
pub fn us_ssn(s: &str) -> bool {
    let ds: Vec<u32> = digits(s).collect();
    if ds.len() != 9 {
        return false;
    }
    let area = ds[0] * 100 + ds[1] * 10 + ds[2];
    let group = ds[3] * 10 + ds[4];
    let serial = ds[5..].iter().fold(0, |acc, d| acc * 10 + d);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// A UK National Insurance number: two prefix letters (not D, F, I, Q, U, V; second not O; not
/// BG, GB, KN, NK, NT, TN, ZZ), six digits, suffix A–D.
pub fn uk_nino(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if compact.len() != 9 {
        return false;
    }
    let (a, b) = (compact[0], compact[1]);
    let bad_first = b"DFIQUV";
    let bad_second = b"DFIQUVO";
    let prefix = [a, b];
    a.is_ascii_uppercase()
        && b.is_ascii_uppercase()
        && !bad_first.contains(&a)
        && !bad_second.contains(&b)
        && !matches!(&prefix, b"BG" | b"GB" | b"KN" | b"NK" | b"NT" | b"TN" | b"ZZ")
        && compact[2..8].iter().all(u8::is_ascii_digit)
        && matches!(compact[8], b'A'..=b'D')
}

/// A French NIR (numéro de sécurité sociale): 13 characters (Corsica's 2A/2B allowed) and a
/// 2-digit key equal to 97 − (number mod 97).
pub fn fr_nir(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if compact.len() != 15 || !matches!(compact[0], b'1' | b'2') {
        return false;
    }
    let mut body = String::with_capacity(13);
    for (i, &b) in compact[..13].iter().enumerate() {
        match b {
            b'0'..=b'9' => body.push(char::from(b)),
            // Corsican departments: 2A counts as 19, 2B as 18 in the key.
            b'A' | b'B' if i == 6 && compact[5] == b'2' => body.push(char::from(b)),
            _ => return false,
        }
    }
    let number: u64 = body.replace("2A", "19").replace("2B", "18").parse().unwrap_or(0);
    let Ok(key) = std::str::from_utf8(&compact[13..]).unwrap_or("").parse::<u64>() else { return false };
    let month = u32::from(compact[3] - b'0') * 10 + u32::from(compact[4] - b'0');
    // Month 01–12, or 20–42 / 50+ for people registered without a known birth month.
    let month_ok = (1..=12).contains(&month) || (20..=42).contains(&month) || (50..=99).contains(&month);
    month_ok && key == 97 - number % 97
}

/// An Italian codice fiscale: 16 characters with the check letter computed from the other 15
/// (omocodia substitutions allowed).
pub fn it_codice_fiscale(s: &str) -> bool {
    // Values of characters in odd (1st, 3rd, …) positions; digits map like the letter at the same index.
    const ODD: [u32; 26] = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23];
    let b = s.as_bytes();
    if b.len() != 16 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut sum = 0;
    for (i, &c) in b[..15].iter().enumerate() {
        let idx = match c {
            b'0'..=b'9' => usize::from(c - b'0'),
            b'A'..=b'Z' => usize::from(c - b'A'),
            _ => return false,
        };
        sum += if i % 2 == 0 { ODD[idx] } else { u32::try_from(idx).unwrap_or(0) };
    }
    u32::from(b[15]) == u32::from(b'A') + sum % 26
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// A Spanish DNI/NIF: 8 digits and the check letter (number mod 23).
pub fn es_dni(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b'-' && *b != b' ').collect();
    if compact.len() != 9 || !compact[..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n: usize = compact[..8].iter().fold(0, |acc, d| acc * 10 + usize::from(d - b'0'));
    DNI_LETTERS[n % 23] == compact[8]
}

/// A Spanish NIE: X/Y/Z (for 0/1/2), 7 digits and the DNI check letter.
pub fn es_nie(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b'-' && *b != b' ').collect();
    if compact.len() != 9 || !compact[1..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let lead = match compact[0] {
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return false,
    };
    let n: usize = compact[1..8].iter().fold(lead, |acc, d| acc * 10 + usize::from(d - b'0'));
    DNI_LETTERS[n % 23] == compact[8]
}

/// An IPv4 address in dotted quad form.
pub fn ipv4(s: &str, before: &str) -> bool {
    // 0.0.0.0 and 255.255.255.255 name no host, nor does a loopback address (127.0.0.1) anyone;
    // one ending in `.0.0` is a network (`192.168.0.0/16`) or, far more often, a four-part
    // version (`AssemblyVersion("1.0.0.0")`, `8.0.0.0`), as is one after `Version` or a pin's `==`.
    let host = |ip: std::net::Ipv4Addr| !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_loopback() && ip.octets()[2..] != [0, 0];
    s.parse::<std::net::Ipv4Addr>().is_ok_and(host) && !after_version_word(before) && !before.ends_with("==")
}

/// An API key after its fixed prefix (`sk-…`, `AKIA…`): an `sk-` one with a digit
/// (`sk-video-tools-extension-pack` is a package name; AWS key ids may have none), and no run of
/// eight equal characters (`sk-xxxxxxxx…`, `AKIAXXXXXXXXXXXXXXXX` are placeholders).
pub fn keyed(key: &str, _: &str) -> bool {
    let masked = key.as_bytes().windows(8).any(|w| w.iter().all(|&b| b == w[0]));
    (!key.starts_with("sk-") || key.bytes().any(|b| b.is_ascii_digit())) && !masked
}

/// True when the last word before a number (past spaces, `:`, `=`) names a version.
fn after_version_word(before: &str) -> bool {
    let word = before.trim_end_matches(|c: char| !c.is_alphanumeric()).rsplit(|c: char| !c.is_alphabetic()).next().unwrap_or_default();
    ["version", "release", "build", "firmware", "versión", "versione"].iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// An IPv6 address; at least three groups so that `12:30` and `::` are not taken for addresses.
pub fn ipv6(s: &str) -> bool {
    s.matches(':').count() >= 2 && s.bytes().filter(u8::is_ascii_hexdigit).count() >= 3 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// ISBN-10 or ISBN-13 with a valid check digit (used to reject phone-shaped ISBNs).
pub fn isbn(s: &str) -> bool {
    let chars: Vec<u8> = s.bytes().filter(|b| b.is_ascii_digit() || *b == b'X').collect();
    match chars.len() {
        10 => {
            let mut sum = 0;
            for (i, &c) in chars.iter().enumerate() {
                let v = if c == b'X' && i == 9 { 10 } else if c.is_ascii_digit() { u32::from(c - b'0') } else { return false };
                sum += v * (10 - u32::try_from(i).unwrap_or(0));
            }
            sum % 11 == 0
        }
        13 if chars.starts_with(b"978") || chars.starts_with(b"979") => {
            let sum: u32 = chars
                .iter()
                .enumerate()
                .map(|(i, &c)| u32::from(c.wrapping_sub(b'0')) * if i % 2 == 0 { 1 } else { 3 })
                .sum();
            sum.is_multiple_of(10)
        }
        _ => false,
    }
}

/// A value written after a secret's name (`name` is the text from the name to the value:
/// `password: `, `Authorization: Bearer `): a password-like string, not code, a reference, a
/// measure or a placeholder. Left: code and templates (`get_password()`, `os.environ["…"]`,
/// `${DB_PASSWORD}`, `<your-token>`, `********`), references (`process.env.GITHUB_TOKEN`,
/// `opts.Password`, `tok_ids2`, `:token`, `C:\…`, `env:…`, `arn:…`), measures and dates
/// (`12.5ms`, `2024-05-01T…`), and plain words. After a password's name the value must mix
/// letters and digits, have three of lower case, upper case, digits and symbols, or (after a
/// `:` or `=`) be a passphrase of 12 characters or more; after another name (token, secret,
/// key, bearer) it must have 8 characters or more, mix letters and digits or have three of those
/// classes, and not be a short lower-case name (`gpt-4o-mini`).
pub fn named_secret(value: &str, name: &str) -> bool {
    // `$DB_PASS`, `${…}`, `$(…)` are references; `$ecr3t!` is a password that starts with `$`.
    let variable = value.strip_prefix('$').is_some_and(|v| v.is_empty() || v.starts_with(['{', '(']) || identifier(v));
    let code = value.contains(['(', ')', '[', ']', '{', '}', '<', '>']) || value.contains(":\\") || variable || value.starts_with(['%', '*', '&', '@', '#', '/', '~', ':', '.']);
    let reference = ["arn:", "env:", "file:", "ssm:", "vault:"].iter().any(|p| value.starts_with(p)) || dotted_path(value) || (value.contains('_') && identifier(value));
    // `ask_password("Password: ")`: a prompt's label.
    let label = value.strip_suffix(':').is_some_and(|v| v.bytes().all(|b| b.is_ascii_alphabetic()));
    if code || reference || label || measure(value) || all_one_character(value) {
        return false;
    }
    let [lower, upper, digit, other] = classes(value);
    let mixed = ((lower || upper) && digit) || [lower, upper, digit, other].iter().filter(|&&c| c).count() >= 3;
    let name = name.to_ascii_lowercase();
    let password = name.contains("pass") || name.starts_with("pwd");
    // `password authentication failed`: after a name and a space only a mixed value is one.
    let spaced = !name.contains([':', '=']);
    if password {
        mixed || (value.len() >= 12 && !spaced)
    } else {
        mixed && value.len() >= 8 && !short_slug(value)
    }
}

/// `gpt-4o-mini`, `cl100k_base`, `my-app-secret-v2`: lower-case words of at most six characters
/// joined by `-`, `_` or `.` — a model's, an encoding's or a resource's name after `token:` or
/// `secret:`, where a token is one long random run.
fn short_slug(value: &str) -> bool {
    let parts: Vec<&str> = value.split(['-', '_', '.']).collect();
    parts.len() >= 2 && parts.iter().all(|p| (1..=6).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// `Config.SECRET_V2`, `process.env.GITHUB_TOKEN`: identifiers joined by dots.
fn dotted_path(value: &str) -> bool {
    value.contains('.') && value.split('.').all(identifier)
}

/// A name in code: letters, `_` or `$`, then digits only at its end (`tok_ids2`, `SECRET_V2`).
/// A token mixes its digits in (`a0AfH6SMBx3kq7`).
fn identifier(part: &str) -> bool {
    let name = part.trim_end_matches(|c: char| c.is_ascii_digit());
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
}

/// `12.5ms`, `180ms.`, `2024-05-01T12:00:00Z`: a number with a unit, or a date.
fn measure(value: &str) -> bool {
    let value = value.trim_end_matches(['.', ',', ':']);
    let number = value.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
    let unit = value.len() - number.len();
    let is_number = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'.') && number.bytes().filter(|&b| b == b'.').count() <= 1;
    let date = value.len() >= 10 && value.as_bytes()[..10].iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
    (is_number && unit <= 3) || date
}

/// The `user:password` of a URL (the password may hold `@`): not a placeholder
/// (`user:password@`, `user:pass@`, `your_redis_password`, `${PASSWORD}`, `<password>`, `****`)
/// nor a development default whose password is its user name (`postgres:postgres`,
/// `guest:guest`).
pub fn url_password(user_info: &str, _: &str) -> bool {
    user_info.split_once(':').is_some_and(|(user, password)| not_placeholder(user, password))
}

/// A password given beside its user (`name` ends with the user: `-u admin:`,
/// `auth=("admin", "`): one that would be a password after `password:`, and not a placeholder
/// nor its user's name (`curl -u admin:admin`).
pub fn user_password(value: &str, name: &str) -> bool {
    let user = name.trim_end_matches([':', '"', '\'', ' ', '\t', ',']).rsplit([' ', '\t', '"', '\'', '=', '(']).next().unwrap_or_default();
    not_placeholder(user, value) && named_secret(value, "password:")
}

/// A value glued to `-p` (`mysql -pXk9mQ2vL`): mixed like a password after `password `, so that
/// flags (`-pthread`, `-pedantic`) and ports (`-p8080:80`, `-p2222`) are not taken for one.
pub fn glued_password(value: &str, _: &str) -> bool {
    named_secret(value, "password ")
}

/// A `SendGrid` API key: `SG.`, 22 characters, `.`, 43 characters.
pub fn sendgrid_key(key: &str, _: &str) -> bool {
    let mut parts = key.split('.').map(str::len);
    matches!((parts.next(), parts.next(), parts.next(), parts.next()), (Some(2), Some(22), Some(43), None))
}

/// `password` is a real one for `user`: not a placeholder (`password`, `your_…`, `${PASS}`) nor
/// a development default whose password is its user name.
fn not_placeholder(user: &str, password: &str) -> bool {
    let lower = password.to_ascii_lowercase();
    let placeholder = ["password", "pass", "passwd", "pwd", "secret", "pw"].contains(&lower.as_str()) || lower.starts_with("your") || lower.contains("password");
    !placeholder && !password.eq_ignore_ascii_case(user) && !password.starts_with(['$', '<', '{', '*', '%', '[']) && !all_one_character(password)
}

/// A token with a fixed prefix (`hf_`, `glpat-`, `npm_`, `sk_test_`, `rk_test_`) of 20 characters
/// or more whose body mixes two of lower case, upper case and digits (`sk_test_xxxx…` is a
/// placeholder); or a Telegram bot token, `<8–10 digits>:AA…` (30–46 characters after the colon).
pub fn prefixed_token(token: &str, _: &str) -> bool {
    if let Some((bot, secret)) = token.strip_prefix("bot").unwrap_or(token).split_once(':') {
        return (8..=10).contains(&bot.len()) && bot.bytes().all(|b| b.is_ascii_digit()) && (30..=46).contains(&secret.len());
    }
    let body = token.trim_start_matches(|c: char| c.is_ascii_lowercase()).trim_start_matches(['_', '-']);
    let body = body.strip_prefix("test_").unwrap_or(body);
    let letters_and_digits = classes(body)[..3].iter().filter(|&&c| c).count();
    token.len() >= 20 && letters_and_digits >= 2 && !all_one_character(body)
}

/// Which of lower case, upper case, digits and other characters `value` holds.
fn classes(value: &str) -> [bool; 4] {
    let has = |class: fn(&u8) -> bool| value.bytes().any(|b| class(&b));
    [has(u8::is_ascii_lowercase), has(u8::is_ascii_uppercase), has(u8::is_ascii_digit), has(|b| !b.is_ascii_alphanumeric())]
}

/// An email address, unless it is a URL's `user:password@host` (a placeholder password the URL
/// check refused: `https://user:pass@example.com`) or a git remote (`git@github.com:…`).
pub fn email(address: &str, before: &str) -> bool {
    let in_url = before.rfind("://").is_some_and(|i| {
        let info = &before[i + 3..];
        info.contains(':') && !info.contains(|c: char| c.is_whitespace() || c == '/')
    });
    !in_url && !address.starts_with("git@")
}

/// `xxxxxx`, `******`: a mask, not a value.
fn all_one_character(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_none_or(|first| chars.all(|c| c == first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_card_prefixes() {
        assert!(payment_card("4111 1111 1111 1111"));
        assert!(payment_card("5500-0000-0000-0004"));
        assert!(payment_card("340000000000009"));
        assert!(!payment_card("4111 1111 1111 1112"), "bad check digit");
        assert!(!payment_card("1111111111111117"), "Luhn-valid but no issuer starts with 1");
        assert!(payment_card("3714 496353 98431"), "Amex grouping");
        assert!(!payment_card("426-7276655-1441327"), "order-number grouping");
    }

    #[test]
    fn iban_mod97_and_length() {
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("GB29NWBK60161331926819"));
        assert!(iban("FR1420041010050500013M02606"));
        assert!(!iban("DE89 3704 0044 0532 0130 01"), "bad checksum");
        assert!(!iban("DE89 3704 0044 0532 0130"), "wrong length for DE");
    }

    #[test]
    fn ssn_nino_rules() {
        assert!(us_ssn("123-45-6789"));
        assert!(!us_ssn("666-45-6789"));
        assert!(!us_ssn("123-00-6789"));
        assert!(uk_nino("AB123456C"));
        assert!(uk_nino("AB 12 34 56 C"));
        assert!(!uk_nino("GB123456C"));
        assert!(!uk_nino("AB123456E"));
    }

    #[test]
    fn nir_key() {
        // 1 84 12 76 451 089 → key 97 - (1841276451089 mod 97)
        let n: u64 = 1_841_276_451_089;
        let key = 97 - n % 97;
        assert!(fr_nir(&format!("184127645108{}{key:02}", 9)));
        assert!(!fr_nir(&format!("1841276451089{:02}", (key + 1) % 97)));
        // Corsica
        let n: u64 = 2_851_219_123_456;
        let key = 97 - n % 97;
        assert!(fr_nir(&format!("285122A123456{key:02}")));
    }

    #[test]
    fn codice_fiscale_check_letter() {
        assert!(it_codice_fiscale("RSSMRA85T10A562S"));
        assert!(!it_codice_fiscale("RSSMRA85T10A562T"));
    }

    #[test]
    fn dni_nie_letters() {
        assert!(es_dni("12345678Z"));
        assert!(es_dni("12345678-Z"));
        assert!(!es_dni("12345678A"));
        assert!(es_nie("X1234567L"));
        assert!(!es_nie("X1234567A"));
    }

    #[test]
    fn ip_and_isbn() {
        assert!(ipv4("192.168.1.20", "host "));
        assert!(!ipv4("300.1.1.1", "host "));
        assert!(ipv6("2001:db8::1"));
        assert!(!ipv6("12:30"));
        assert!(!ipv6("::"));
        assert!(isbn("0-306-40615-2"));
        assert!(isbn("978-3-16-148410-0"));
        assert!(!isbn("978-3-16-148410-1"));
    }
}

