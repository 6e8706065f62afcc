//! The chat-completions body parser and validator: never panics; what it accepts survives a
//! round trip through its own serialisation unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(req) = gateway::chat_request::parse_chat_request(data) {
        let again = serde_json::to_vec(&req).expect("an accepted request serialises");
        let reparsed = gateway::chat_request::parse_chat_request(&again).expect("its own serialisation is accepted");
        assert_eq!(serde_json::to_value(&reparsed).ok(), serde_json::to_value(&req).ok());
    }
});
