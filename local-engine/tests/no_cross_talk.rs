//! Sixteen concurrent greedy requests, batched together, each get exactly their solo answer.

mod common;

use common::{engine_with, generate, greedy, user};

const TOPICS: [&str; 16] = [
    "a planet", "an ocean", "a fruit", "a colour", "a river", "a mountain", "a bird", "a tree",
    "a metal", "a city", "a flower", "a fish", "an insect", "a dance", "a tool", "a cheese",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_greedy_requests_match_their_solo_outputs() {
    let engine = engine_with(8192, 8, 32);
    let prompt = |topic: &str| user(&format!("Describe {topic} in one sentence."));
    let mut solo = Vec::new();
    for topic in TOPICS {
        solo.push(generate(&engine, prompt(topic), greedy(24)).await.unwrap().text);
    }
    let together = futures::future::join_all(TOPICS.iter().map(|t| generate(&engine, prompt(t), greedy(24)))).await;
    for ((topic, alone), batched) in TOPICS.iter().zip(&solo).zip(together) {
        assert_eq!(&batched.unwrap().text, alone, "cross-talk for {topic}");
    }
    let stats = engine.stats();
    assert_eq!((stats.active, stats.kv_cells_used, stats.queued), (0, 0, 0), "{stats:?}");
}

/// Long prompts are prefilled in chunks whose sizes depend on what else is running, and their
/// last token decoded with other sequences or alone: none of that may change a greedy answer
/// (`[local].batch_invariant`, the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_prefilled_beside_others_match_their_solo_outputs() {
    let engine = engine_with(8192, 4, 16);
    let prompt = |i: usize| {
        let facts: Vec<String> = (0..25).map(|k| format!("fact{k} is about animal number {}.", k * i)).collect();
        let word = ["Zebra", "Quartz", "Mango", "Violet"][i];
        user(&format!("{word} background: {} Tell me about item {i} in a list of animals.", facts.join(" ")))
    };
    let mut solo = Vec::new();
    for i in 0..4 {
        solo.push(generate(&engine, prompt(i), greedy(32)).await.unwrap().text);
    }
    for round in 0..2 {
        let together = futures::future::join_all((0..4).map(|i| generate(&engine, prompt(i), greedy(32)))).await;
        for (i, (alone, batched)) in solo.iter().zip(together).enumerate() {
            assert_eq!(&batched.unwrap().text, alone, "round {round}: prompt {i} answered differently beside others");
        }
    }
}
