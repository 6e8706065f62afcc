//! The host prompt cache (`[local].prompt_cache_mib`) never changes an answer, also once it is
//! full and evicts: a sequence restored from a saved state answers exactly as it would with the
//! cache off. (Its entries were once looked up by position, and saving a state could evict the
//! entry just chosen: another conversation's cells were then restored under this prompt.)

mod common;

use common::{engine_with_prompt_cache, generate, greedy, user};
use local_engine::EngineHandle;

fn engine(prompt_cache_mib: u32) -> EngineHandle {
    engine_with_prompt_cache(4096, 1, 4, prompt_cache_mib)
}

/// Four kinds of question, so each prompt shares a long prefix with earlier ones of its kind
/// (a state worth restoring) but not with the one just before it (which holds the slot).
fn prompts(n: usize) -> Vec<String> {
    let words = ["banana", "bookkeeper", "possession", "parallel", "committee", "broccoli"];
    let names = ["Tom", "Ana", "Ravi", "Mei"];
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("What is {} + {}? Answer with the number only.", i * 7 % 100, i * 13 % 1000),
            1 => format!("Which number is larger, {} or {}? Answer with the number only.", i * 31 % 5000, i * 17 % 700),
            2 => format!("How many times does the letter 'e' appear in the word '{}'? Answer with the number only.", words[i % words.len()]),
            _ => format!("{} has {} coins and gets {} more. How many coins does {} have now? Answer with the number only.", names[i % 4], i % 50, i % 30, names[i % 4]),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_a_full_prompt_cache_match_answers_without_one() {
    let prompts = prompts(32);
    // 8 MiB hold about five saved states of this model: one per kind of question, and saves evict.
    let (cached, uncached) = (engine(8), engine(0));
    for (i, prompt) in prompts.iter().enumerate() {
        let with_cache = generate(&cached, user(prompt), greedy(24)).await.unwrap().text;
        let without = generate(&uncached, user(prompt), greedy(24)).await.unwrap().text;
        assert_eq!(with_cache, without, "prompt {i} {prompt:?}: the prompt cache changed the answer");
    }
    let stats = cached.stats();
    assert!(stats.host_cache_hits_total >= 8, "the cache must have been used: {stats:?}");
    assert!(stats.host_cache_bytes <= 8 * 1024 * 1024, "{stats:?}");
    assert_eq!(uncached.stats().host_cache_hits_total, 0);
}

/// A long prompt asked again is restored whole from the host cache (all but its last token):
/// the answer must be the one it got the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_restored_whole_answers_as_it_did_cold() {
    let facts: Vec<String> = (0..25).map(|k| format!("fact{k} is about animal number {}.", k * 7)).collect();
    let prompt = format!("Copper background: {} Tell me about item 7 in a list of animals.", facts.join(" "));
    let other = "Say something about rivers.";
    let (cached, uncached) = (engine(64), engine(0));
    let cold = generate(&cached, user(&prompt), greedy(48)).await.unwrap().text;
    // Another prompt takes the only slot, so the first one's state goes to the host cache.
    generate(&cached, user(other), greedy(8)).await.unwrap();
    let restored = generate(&cached, user(&prompt), greedy(48)).await.unwrap().text;
    assert!(cached.stats().host_cache_hits_total >= 1, "{:?}", cached.stats());
    let without = generate(&uncached, user(&prompt), greedy(48)).await.unwrap().text;
    assert_eq!(cold, without);
    assert_eq!(restored, cold, "restoring the prompt from the host cache changed the answer");
}
