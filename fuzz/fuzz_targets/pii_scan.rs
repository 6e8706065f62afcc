//! The PII scanner: never panics; spans lie inside the text on character boundaries, in order
//! and disjoint; redacting them and restoring the placeholders gives the text back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let spans = router::scan_pii(text);
    let mut last = 0;
    for span in &spans {
        assert!(span.start >= last && span.start < span.end && span.end <= text.len(), "{span:?}");
        assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
        last = span.end;
    }
    let mut redaction = router::Redaction::new();
    let redacted = redaction.redact(text, &spans);
    assert_eq!(redaction.restore(&redacted), text);
});
