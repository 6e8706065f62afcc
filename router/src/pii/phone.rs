//! Phone numbers: a loose candidate regex, then structural rules that keep dates, ISBNs,
//! versions, prices and bare order numbers out.

use super::checks;

/// `+CC` / `00CC` / `(0)` prefixes, digit groups split by spaces, dots, dashes or slashes,
/// optional parentheses, an optional extension (grouped forms first: the regex prefers the first
/// alternative that matches). A lone group needs 5 digits, so short numbers
/// (`2024`, `204`) are not candidates at all. Other lengths are left to [`is_phone`]: unbounded
/// repetitions keep the scanner's automaton small (counted ones multiply its states).
pub const REGEX: &str = r"(?:\+|\([0-9]{1,5}\) ?|(?-u:\b))(?:[0-9]{1,15}(?:(?:[ .\-/]{1,2}| ?\([0-9]{1,5}\) ?)[0-9]{1,15}){1,9}|[0-9]{5,17})(?: ?(?:x|ext\.? ?)[0-9]{1,6})?";

/// Word stems that introduce order, invoice, tracking and reference numbers, in the six
/// languages: a number right after one of them is an identifier, not a phone number.
const ID_STEMS: &[&str] = &[
    "order", "invoice", "tracking", "shipment", "parcel", "package", "reference", "ticket", "account",
    "isbn", "postcode", "zip", "bestell", "rechnung", "sendung", "paket", "auftrag", "kunden", "commande",
    "facture", "suivi", "colis", "envoi", "dossier", "ordine", "fattura", "spedizione", "pacco",
    "tracciamento", "pratica", "pedido", "factura", "envío", "envio", "paquete", "seguimiento", "postal",
];
/// Country calling codes of the markets we target, and the NANP's `1`.
const COUNTRY_CODES: &[&str] = &["1", "44", "49", "33", "39", "34", "41", "43", "31", "32", "351", "353", "352", "45", "46", "47", "48", "30", "36", "40", "420", "421", "358", "372", "371", "370", "386", "385", "356", "357", "359", "61", "64", "81", "82", "86", "91", "52", "55", "7", "90", "971", "972", "27"];

/// True when `s` has the shape of a phone number and `before` (the text just before it) does
/// not introduce an identifier.
pub fn is_phone(s: &str, before: &str) -> bool {
    // The extension does not count towards the number's length.
    let number = s.find(['x', 'e']).map_or(s, |i| s[..i].trim_end());
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let groups: Vec<&str> = number.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    shaped_like_phone(number, &digits, &groups) && !introduces_id(before)
}

fn shaped_like_phone(number: &str, digits: &str, groups: &[&str]) -> bool {
    let n = digits.len();
    // Order numbers such as `009-7135771-9608415` have several long groups; a phone at most one.
    if groups.iter().filter(|g| g.len() >= 6).count() > 1 {
        return false;
    }
    let international = number.starts_with('+') || number.starts_with("00");
    if international {
        let national = if number.starts_with('+') { digits } else { &digits[2..] };
        let has_cc = COUNTRY_CODES.iter().any(|cc| national.starts_with(cc));
        return has_cc && (9..=15).contains(&national.len());
    }
    if !(9..=12).contains(&n) || looks_like_date(groups, number) || looks_like_isbn(groups, number) || is_decimal_list(number) {
        return false;
    }
    if number.starts_with('(') {
        return true;
    }
    if groups.len() == 1 {
        // The 32-bit limits (`INT_MAX is 2147483647`, `4294967295`) come up in code, not calls.
        if ["2147483647", "2147483648", "4294967295", "4294967296"].contains(&digits) {
            return false;
        }
        // A bare run of digits: a national number with its trunk 0, an Italian mobile (3…), a
        // Spanish number (6…–9…, nine digits) or a North American one (NXX NXX XXXX).
        let d = digits.as_bytes();
        return (d[0] == b'0' && (9..=11).contains(&n))
            || (d[0] == b'3' && (9..=11).contains(&n))
            || (n == 9 && matches!(d[0], b'6'..=b'9'))
            || (n == 10 && d[0] >= b'2' && d[3] >= b'2');
    }
    // Lists of equal short numbers (`2019 2020 2021`, `98 87 76 65 54`, `8080 8081 8082`): a
    // phone printed in groups of two or four digits starts with its trunk 0 (`01 23 45 67 89`,
    // `0171 2345 6789`).
    if groups.len() >= 3 && matches!(groups[0].len(), 2 | 4) && groups.iter().all(|g| g.len() == groups[0].len()) && !digits.starts_with('0') {
        return false;
    }
    // Dotted versions (`119.0.1478.146`) have 1-digit or long groups; dotted phone numbers
    // (`202.555.0143`, `06.12.34.56.78`) have groups of 2–4.
    let dotted = number.contains('.') && !number.contains([' ', '-', '/']);
    if dotted && groups.iter().any(|g| !(2..=4).contains(&g.len())) {
        return false;
    }
    // Four dotted groups of at most three digits are an IPv4 address's shape (`255.255.255.255`),
    // also with a network's prefix length (`192.168.0.0/16`).
    let quad = |ip: &str| ip.split('.').count() == 4 && ip.split('.').all(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
    if (dotted && groups.len() == 4 && groups.iter().all(|g| g.len() <= 3)) || number.split_once('/').is_some_and(|(ip, _)| quad(ip)) {
        return false;
    }
    groups.len() <= 6
}

/// Decimals listed with spaces (`3.14 3.14 3.14`, `1.5 2.25 10.0`): every space-separated part
/// holds one dot. A phone number mixes dots and spaces in no such way.
fn is_decimal_list(s: &str) -> bool {
    s.contains(' ') && s.split(' ').filter(|part| !part.is_empty()).all(|part| part.matches('.').count() == 1 && !part.contains(['-', '/']))
}

/// ISBNs as printed: 978/979 and 13 digits, or ten characters in four hyphenated groups, with a
/// valid check digit.
fn looks_like_isbn(groups: &[&str], s: &str) -> bool {
    let hyphenated = s.contains('-') && !s.contains([' ', '.', '/']);
    let shaped = match groups.len() {
        1 => s.len() == 13 && (s.starts_with("978") || s.starts_with("979")),
        4 => hyphenated,
        5 => hyphenated && (s.starts_with("978") || s.starts_with("979")),
        _ => false,
    };
    shaped && checks::isbn(s)
}

/// True when the text before a number ends with a word that introduces an identifier.
fn introduces_id(before: &str) -> bool {
    // Only the words since the last digit or clause end count: "Order 123" is an order number,
    // but in "Postcode 74473 Tel: 0301…" or "Order arrived. Call 0301…" the word introduced
    // something else.
    let clause = &before[clause_start(before)..];
    clause.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).any(|word| {
        let after = clause[word.as_ptr() as usize - clause.as_ptr() as usize + word.len()..].chars().next();
        ID_STEMS.iter().any(|stem| starts_with_ignore_ascii_case(word, stem))
            || word.eq_ignore_ascii_case("nr")
            // "No." and "Re:" but not the word "no".
            || ((word.eq_ignore_ascii_case("no") || word.eq_ignore_ascii_case("re")) && matches!(after, Some('.' | ':')))
    })
}

/// Byte offset where the last clause of `before` starts: after its last digit or clause
/// punctuation ("Nr." and "No." are abbreviations, not sentence ends).
fn clause_start(before: &str) -> usize {
    let b = before.as_bytes();
    let mut i = b.len();
    while i > 0 {
        let c = b[i - 1];
        let abbreviation = c == b'.' && i >= 3 && matches!(&[b[i - 3].to_ascii_lowercase(), b[i - 2].to_ascii_lowercase()], b"nr" | b"no");
        if c.is_ascii_digit() || matches!(c, b',' | b';' | b'\n' | b'!' | b'?' | b')' | b'>') || (c == b'.' && !abbreviation) {
            return i;
        }
        i -= 1;
    }
    0
}

fn starts_with_ignore_ascii_case(word: &str, stem: &str) -> bool {
    word.len() >= stem.len() && word.as_bytes()[..stem.len()].eq_ignore_ascii_case(stem.as_bytes())
}

/// `dd.mm.yyyy`, `dd/mm/yyyy`, `yyyy-mm-dd` and the like.
fn looks_like_date(groups: &[&str], s: &str) -> bool {
    if groups.len() != 3 || s.contains(' ') {
        return false;
    }
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    matches!(lens.as_slice(), [1 | 2, 1 | 2, 4 | 2] | [4, 1 | 2, 1 | 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_national_and_international_forms() {
        for phone in [
            "+1-202-555-0143", "(202) 555-0143", "202-555-0143", "202.555.0143", "001-202-555-0143x123",
            "+44 20 7946 0958", "020 7946 0958", "+44(0)20 7946 0958", "07700 900123",
            "+49 30 1234567", "030 1234567", "+49 (0) 171 2345678", "0171/2345678",
            "+33 1 23 45 67 89", "01 23 45 67 89", "+33 (0)6 12 34 56 78",
            "+39 06 1234 5678", "06 1234 5678", "312 345 6789",
            "+34 912 345 678", "912 34 56 78", "612345678",
        ] {
            assert!(is_phone(phone, "Call me on "), "{phone}");
        }
    }

    #[test]
    fn rejects_dates_isbns_and_short_numbers() {
        for not_phone in ["2019 2020 2021", "1024 2048 4096", "8080 8081 8082", "98 87 76 65 54 43", "30 12 45 67 89", "15.03.2024", "2024-03-15", "03/15/2024", "978-3-16-148410-0", "0-306-40615-2", "1234", "4839201", "123456789", "119.0.1478.146", "3.14 3.14 3.14", "1.5 2.25 10.0 7.75", "2147483647", "4294967295", "192.168.0.0/16"] {
            assert!(!is_phone(not_phone, "see "), "{not_phone}");
        }
    }

    #[test]
    fn identifier_words_before_a_number_win() {
        assert!(is_phone("6656272032", "Call me back on "));
        assert!(!is_phone("6656272032", "arrived. Shipment "));
        assert!(!is_phone("0427841239", "Sendungsnummer: "));
        assert!(is_phone("0427841239", "Sendung kam nicht. Ruf an: "));
    }
}
