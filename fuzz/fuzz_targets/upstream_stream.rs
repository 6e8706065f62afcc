//! The upstream stream decoder (SSE framing, then OpenAI chunks or the Anthropic event
//! translation), fed a body split in two at a fuzzed point: never panics, and a split never
//! changes what comes out.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [flags, split, body @ ..] = data else { return };
    let anthropic = flags & 1 == 1;
    // `created` of translated Anthropic chunks is the clock's second: not part of the comparison.
    let decode = |pieces| {
        let mut out = providers::decode_stream(pieces, anthropic);
        for chunk in out.iter_mut().flatten() {
            chunk.created = 0;
        }
        format!("{out:?}")
    };
    let at = usize::from(*split).min(body.len());
    assert_eq!(decode(vec![body.to_vec()]), decode(vec![body[..at].to_vec(), body[at..].to_vec()]));
});
