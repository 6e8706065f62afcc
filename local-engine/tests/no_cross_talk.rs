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
