//! A long prompt is prefilled in chunks: a running stream keeps receiving tokens meanwhile.

mod common;

use std::time::Duration;

use common::{engine_with, user};
use local_engine::{GenerationEvent, GenerationRequest, SamplingParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_keeps_emitting_while_a_3000_token_prompt_prefills() {
    // 8192 cells over 2 sequences: 4096 each, room for the 3000-token prompt.
    let engine = engine_with(8192, 2, 8);
    let greedy = |max_tokens| SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ..SamplingParams::default() };
    let mut running = engine
        .submit(GenerationRequest { messages: user("Count from 1 to 500, separated by commas."), tools: None, sampling: greedy(600), raw_prompt: None, tenant: None })
        .unwrap();
    // Wait until it is generating.
    loop {
        match tokio::time::timeout(Duration::from_mins(1), running.recv()).await.unwrap().unwrap() {
            GenerationEvent::Text(_) => break,
            GenerationEvent::Started { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let long_text = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(200);
    let mut long = engine
        .submit(GenerationRequest { messages: user(&format!("{long_text}\nHow many foxes?")), tools: None, sampling: greedy(4), raw_prompt: None, tenant: None })
        .unwrap();
    let prompt_tokens = match tokio::time::timeout(Duration::from_mins(1), long.recv()).await.unwrap().unwrap() {
        GenerationEvent::Started { prompt_tokens } => prompt_tokens,
        other => panic!("unexpected {other:?}"),
    };
    assert!(prompt_tokens >= 2500, "the long prompt has {prompt_tokens} tokens");
    // Count the running stream's tokens until the long request produces its first token.
    let mut while_prefilling = 0;
    loop {
        tokio::select! {
            biased;
            event = long.recv() => match event.unwrap() {
                GenerationEvent::Text(_) | GenerationEvent::Finished { .. } => break,
                other => panic!("unexpected {other:?}"),
            },
            event = running.recv() => match event.unwrap() {
                GenerationEvent::Text(_) => while_prefilling += 1,
                other => panic!("the running stream ended during the prefill: {other:?}"),
            },
        }
    }
    // One token per step, one prompt chunk per step: the stream advanced through the prefill.
    assert!(while_prefilling >= 10, "the running stream got only {while_prefilling} tokens while {prompt_tokens} prompt tokens were prefilled");
}
