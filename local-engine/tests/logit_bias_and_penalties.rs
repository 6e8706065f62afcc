//! `logit_bias` and the frequency/presence penalties change what greedy decoding picks, as in
//! `OpenAI`'s API, and a bias on a token outside the vocabulary is refused.

mod common;

use common::{engine, generate, greedy, user};
use local_engine::{EngineError, SamplingParams};

const PROMPT: &str = "List the days of the week, then list them again.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_bias_makes_greedy_decoding_repeat_that_token() {
    let engine = engine(2048);
    let plain = generate(&engine, user(PROMPT), greedy(12)).await.expect("answer");
    // Token 1000 is an ordinary word piece; +100 outweighs every other logit.
    let biased = generate(&engine, user(PROMPT), SamplingParams { logit_bias: vec![(1000, 100.0)], ..greedy(12) }).await.expect("answer");
    assert_eq!(biased.completion_tokens, 12);
    let first = &biased.pieces[0];
    assert!(!first.is_empty() && biased.pieces.iter().all(|p| p == first), "{:?}", biased.pieces);
    assert_ne!(biased.text, plain.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalties_steer_greedy_decoding_away_from_repeats() {
    let engine = engine(2048);
    let plain = generate(&engine, user(PROMPT), greedy(48)).await.expect("answer");
    for penalized in [
        SamplingParams { frequency_penalty: 2.0, ..greedy(48) },
        SamplingParams { presence_penalty: 2.0, ..greedy(48) },
    ] {
        let out = generate(&engine, user(PROMPT), penalized).await.expect("answer");
        assert_ne!(out.text, plain.text, "a penalty of 2 changes a repetitive greedy answer");
        let distinct = |pieces: &[String]| pieces.iter().collect::<std::collections::HashSet<_>>().len() * 1000 / pieces.len().max(1);
        assert!(distinct(&out.pieces) >= distinct(&plain.pieces), "{:?}\nvs {:?}", out.pieces, plain.pieces);
    }
    // Without them, greedy decoding is unchanged (the fast path).
    assert_eq!(generate(&engine, user(PROMPT), greedy(48)).await.expect("answer").text, plain.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bias_outside_the_vocabulary_is_refused() {
    let engine = engine(2048);
    match generate(&engine, user("Hi"), SamplingParams { logit_bias: vec![(i32::MAX, 1.0)], ..greedy(4) }).await {
        Err(EngineError::InvalidParameter { param: "logit_bias", .. }) => {}
        Err(other) => panic!("{other:?}"),
        Ok(out) => panic!("answered {:?}", out.text),
    }
}
