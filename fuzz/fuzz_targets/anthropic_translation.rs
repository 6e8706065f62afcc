//! The Anthropic translation both ways: chat requests to Messages bodies, Messages answers and
//! stream events to chat answers and chunks. Never panics on any JSON.
#![no_main]

use providers::anthropic;

const EVENTS: &[&str] =
    &["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop", "ping", "error"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(req) = serde_json::from_value::<providers::wire::ChatRequest>(value.clone()) {
        let _ = anthropic::request_body(&req, Some(1024));
    }
    let _ = anthropic::response_of(&value);
    let _ = anthropic::error_body(data);
    // A stream: the same value as every event in turn, through one translator.
    let mut translator = anthropic::StreamTranslator::default();
    for event in EVENTS {
        let _ = translator.event(event, &value);
    }
});
