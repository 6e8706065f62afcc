//! Under mixed traffic — more requests than slots, shared system prompts and question stems,
//! repeated prompts, clients going away mid-answer, and a prompt cache small enough to evict —
//! every completed greedy answer is exactly the answer the same prompt gets from an engine that
//! runs one sequence at a time with no prompt cache.
//!
//! Prompts only: cells a sequence computed while *generating* (one token per step) can round
//! differently from the same tokens prefilled together, so a conversation's next turn that reuses
//! its earlier answer's cells may, rarely, continue differently from a cold prefill of the same
//! text (measured: 1 of 6 second turns on one slot, no concurrency). That is the arithmetic of the
//! kernels, as with llama-server's prompt cache, not one sequence seeing another's tokens.

mod common;

use std::time::Duration;

use common::{engine_with_prompt_cache, generate, greedy};
use local_engine::{EngineHandle, GenerationEvent, GenerationRequest, TemplateMessage};

fn engine(parallel: u32, prompt_cache_mib: u32) -> EngineHandle {
    engine_with_prompt_cache(4096, parallel, 64, prompt_cache_mib)
}

fn message(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage { role: role.into(), content: content.into() }
}

const SYSTEM: &str = "You are a concise assistant for a travel agency. Answer in one or two short sentences.";
const TOPICS: [&str; 6] = ["Lisbon", "Kyoto", "the Alps", "Iceland", "Cairo", "Patagonia"];

/// Questions: some with the shared system prompt, some without, stems shared across topics;
/// every third asked twice.
fn prompts() -> Vec<Vec<TemplateMessage>> {
    let mut out = Vec::new();
    for (i, topic) in TOPICS.iter().enumerate() {
        let question = message("user", &format!("What should a visitor see in {topic}?"));
        out.push(if i % 2 == 0 { vec![message("system", SYSTEM), question] } else { vec![question] });
        out.push(vec![message("user", &format!("How many days does a trip to {topic} need? Answer with a number."))]);
        out.push(vec![message("system", SYSTEM), message("user", &format!("Is {topic} expensive to visit in summer?"))]);
        if i % 3 == 0 {
            out.push(out[out.len() - 2].clone());
        }
    }
    out
}

/// Runs `prompt` and drops it after its first piece of text: the client went away.
async fn cancel_after_first_text(engine: &EngineHandle, messages: Vec<TemplateMessage>) {
    let mut events = engine.submit(GenerationRequest { messages, tools: None, sampling: greedy(24), raw_prompt: None, tenant: None }).expect("queued");
    loop {
        match tokio::time::timeout(Duration::from_mins(2), events.recv()).await.expect("engine answers") {
            Some(GenerationEvent::Text(_) | GenerationEvent::Finished { .. } | GenerationEvent::Failed(_)) | None => return,
            Some(GenerationEvent::Started { .. } | GenerationEvent::Token(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reuse_and_cancels_never_change_an_answer() {
    let reference = engine(1, 0);
    let under_test = engine(4, 8);
    let prompts = prompts();
    let mut expected = Vec::new();
    for prompt in &prompts {
        expected.push(generate(&reference, prompt.clone(), greedy(24)).await.unwrap().text);
    }
    // Waves of six (more than the four slots): the fourth of each wave is cancelled mid-answer.
    let mut checked = 0;
    for (wave, chunk) in prompts.chunks(6).enumerate() {
        let runs = chunk.iter().enumerate().map(|(k, prompt)| {
            let engine = &under_test;
            async move {
                if k == 3 {
                    cancel_after_first_text(engine, prompt.clone()).await;
                    None
                } else {
                    Some(generate(engine, prompt.clone(), greedy(24)).await.unwrap().text)
                }
            }
        });
        for (k, answer) in futures::future::join_all(runs).await.into_iter().enumerate() {
            if let Some(answer) = answer {
                let i = wave * 6 + k;
                assert_eq!(answer, expected[i], "prompt {i} ({:?}) changed under concurrent traffic", prompts[i].last().map(|m| &m.content));
                checked += 1;
            }
        }
    }
    assert!(checked >= 16, "{checked}");
    let stats = under_test.stats();
    assert!(stats.prefix_hits_total > 0 && stats.cancelled_total > 0, "{stats:?}");
    assert_eq!((stats.active, stats.kv_cells_used, stats.queued), (0, 0, 0), "{stats:?}");
}
