//! Stop strings on the real model: text held back because it could begin a stop string is the
//! answer's when the model ends its turn without producing one.

mod common;

use common::{engine, generate, greedy, user};
use local_engine::{FinishReason, SamplingParams};

const PROMPTS: [&str; 5] = [
    "Count from 1 to 10, separated by commas.",
    "Count from 1 to 5, separated by commas.",
    "What is the capital of France?",
    "Say hello.",
    "Reply with one word: yes or no. Is water wet?",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_stop_string_loses_no_text_when_the_turn_ends() {
    let engine = engine(2048);
    // A prompt the model answers and ends its turn on within 48 tokens (which one depends on the
    // CPU's arithmetic: greedy answers differ between AVX2 and AVX-512 builds).
    let mut ended = None;
    for prompt in PROMPTS {
        let plain = generate(&engine, user(prompt), greedy(48)).await.unwrap();
        if plain.reason == FinishReason::Stop && !plain.text.is_empty() {
            ended = Some((prompt, plain));
            break;
        }
    }
    let (prompt, plain) = ended.expect("the model ends its turn on one of the prompts");
    // Each stop begins with the answer's tail (or is the whole answer and more), so that tail is
    // held back until the end of the turn shows it is not a stop string.
    let tail_start = plain.text.char_indices().rev().nth(1).map_or(0, |(i, _)| i);
    for stop in [format!("{}\u{1}", plain.text), format!("{}\u{1}", &plain.text[tail_start..])] {
        let sampling = SamplingParams { stop: vec![stop.clone()], ..greedy(48) };
        let held = generate(&engine, user(prompt), sampling).await.unwrap();
        assert_eq!((held.text.as_str(), held.reason), (plain.text.as_str(), FinishReason::Stop), "stop {stop:?}");
    }
    // A stop string that does occur still cuts the answer before it.
    let at = plain.text.len() / 2;
    let at = (at..plain.text.len()).find(|i| plain.text.is_char_boundary(*i)).unwrap();
    let cut = generate(&engine, user(prompt), SamplingParams { stop: vec![plain.text[at..].to_owned()], ..greedy(48) }).await.unwrap();
    assert!(plain.text.starts_with(&cut.text) && cut.text.len() <= at, "{:?} vs {:?}", cut.text, plain.text);
}
