//! With `top_logprobs` set, the engine reports every generated token with its log-probability
//! and the most likely alternatives, and the answer itself does not change.

mod common;

use common::{engine, generate, greedy, user};
use local_engine::SamplingParams;

const PROMPT: &str = "Name three colours of the rainbow.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_token_is_reported_with_its_alternatives() {
    let engine = engine(2048);
    let plain = generate(&engine, user(PROMPT), greedy(24)).await.expect("answer");
    assert!(plain.tokens.is_empty(), "no tokens reported unless asked for");
    let reported = generate(&engine, user(PROMPT), SamplingParams { top_logprobs: Some(3), ..greedy(24) }).await.expect("answer");
    assert_eq!(reported.text, plain.text, "asking for log-probabilities changes nothing in the answer");
    assert_eq!(reported.tokens.len(), reported.completion_tokens as usize);
    let bytes: Vec<u8> = reported.tokens.iter().flat_map(|t| t.bytes.clone()).collect();
    assert_eq!(String::from_utf8(bytes).expect("whole characters"), reported.text, "the tokens spell the answer");
    for token in &reported.tokens {
        assert_eq!(token.top.len(), 3, "{token:?}");
        assert!(token.top.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first: {token:?}");
        assert!(token.top.iter().all(|(_, l)| *l <= 0.0) && token.logprob <= 0.0);
        let mass: f32 = token.top.iter().map(|(_, l)| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{token:?}");
        // Greedy decoding picks the most likely token.
        assert_eq!((&token.top[0].0, token.top[0].1), (&token.bytes, token.logprob), "{token:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_alternatives_still_reports_each_token() {
    let engine = engine(2048);
    let reported = generate(&engine, user(PROMPT), SamplingParams { top_logprobs: Some(0), ..greedy(8) }).await.expect("answer");
    assert_eq!(reported.tokens.len(), reported.completion_tokens as usize);
    assert!(reported.tokens.iter().all(|t| t.top.is_empty() && t.logprob.is_finite() && t.logprob <= 0.0));
}
