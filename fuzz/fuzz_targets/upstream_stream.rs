//! The upstream stream decoder (SSE framing, then OpenAI chunks or the Anthropic event
//! translation), fed a body split in two at a fuzzed point: never panics, and a split never
//! changes what comes out.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [flags, split, body @ ..] = data else { return };
    let anthropic = flags & 1 == 1;
    let whole = providers::decode_stream(vec![body.to_vec()], anthropic);
    let at = usize::from(*split).min(body.len());
    let pieces = providers::decode_stream(vec![body[..at].to_vec(), body[at..].to_vec()], anthropic);
    assert_eq!(format!("{whole:?}"), format!("{pieces:?}"));
});
