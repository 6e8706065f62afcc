//! Prompts that share a prefix with a finished or live sequence reuse its KV cells.

mod common;

use common::{engine_with, generate, greedy, user};
use local_engine::TemplateMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_reuses_all_but_its_last_token_and_answers_the_same() {
    let engine = engine_with(4096, 2, 8);
    let first = generate(&engine, user("What is the boiling point of water?"), greedy(16)).await.unwrap();
    let before = engine.stats();
    let second = generate(&engine, user("What is the boiling point of water?"), greedy(16)).await.unwrap();
    let after = engine.stats();
    assert_eq!(second.text, first.text);
    assert_eq!(after.prefix_hits_total - before.prefix_hits_total, 1);
    assert_eq!(after.prefix_tokens_reused_total - before.prefix_tokens_reused_total, u64::from(first.prompt_tokens) - 1);
    assert_eq!(after.prompt_tokens_total - before.prompt_tokens_total, 1, "only the last prompt token is decoded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_of_a_conversation_reuses_the_earlier_turns() {
    let engine = engine_with(4096, 2, 8);
    let question = TemplateMessage { role: "user".into(), content: "Name a large animal.".into() };
    let first = generate(&engine, vec![question.clone()], greedy(12)).await.unwrap();
    let before = engine.stats();
    let turn2 = vec![
        question,
        TemplateMessage { role: "assistant".into(), content: first.text.clone() },
        TemplateMessage { role: "user".into(), content: "Where does it live?".into() },
    ];
    let second = generate(&engine, turn2, greedy(12)).await.unwrap();
    let after = engine.stats();
    let reused = after.prefix_tokens_reused_total - before.prefix_tokens_reused_total;
    assert!(reused >= u64::from(first.prompt_tokens), "reused {reused} of the first turn's {} prompt tokens", first.prompt_tokens);
    assert_eq!(after.prompt_tokens_total - before.prompt_tokens_total, u64::from(second.prompt_tokens) - reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_common_system_prompt_share_it_and_keep_their_own_answers() {
    let engine = engine_with(4096, 4, 8);
    let ask = |q: &str| vec![
        TemplateMessage { role: "system".into(), content: "You are a terse assistant for a hardware store. Answer in one short sentence.".into() },
        TemplateMessage { role: "user".into(), content: q.into() },
    ];
    let hammer_alone = generate(&engine, ask("What is a hammer for?"), greedy(16)).await.unwrap().text;
    let saw_alone = generate(&engine, ask("What is a saw for?"), greedy(16)).await.unwrap().text;
    let before = engine.stats();
    let (hammer, saw) = tokio::join!(generate(&engine, ask("What is a hammer for?"), greedy(16)), generate(&engine, ask("What is a saw for?"), greedy(16)));
    assert_eq!(hammer.unwrap().text, hammer_alone);
    assert_eq!(saw.unwrap().text, saw_alone);
    assert_eq!(engine.stats().prefix_hits_total - before.prefix_hits_total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_whose_slot_was_taken_comes_back_from_host_memory() {
    // One slot: B overwrites A's cells, so A's second run can only come from the host cache.
    let engine = engine_with(2048, 1, 8);
    let a = user("Please list the planets of the solar system in order from the sun, with one fact each.");
    let b = user("What is the tallest mountain on Earth?");
    let first = generate(&engine, a.clone(), greedy(24)).await.unwrap();
    generate(&engine, b, greedy(24)).await.unwrap();
    let before = engine.stats();
    assert!(before.host_cache_bytes > 0, "A's state was saved before B took the slot: {before:?}");
    let again = generate(&engine, a, greedy(24)).await.unwrap();
    let after = engine.stats();
    assert_eq!(again.text, first.text, "restored state must give the same answer");
    assert_eq!(after.host_cache_hits_total - before.host_cache_hits_total, 1, "{after:?}");
    assert_eq!(after.prefix_tokens_reused_total - before.prefix_tokens_reused_total, u64::from(first.prompt_tokens) - 1);
    assert_eq!(after.prompt_tokens_total - before.prompt_tokens_total, 1);
}
