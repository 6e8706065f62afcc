//! The engine on the real default model (fetched by `make model`).

mod common;

use common::{engine, generate, greedy, model, user};
use local_engine::{chat_template_of, ChatTemplate, EngineError, FinishReason};

#[test]
fn the_gguf_template_renders_smollm2s_default_system_prompt() {
    let source = chat_template_of(&model()).unwrap();
    let rendered = ChatTemplate::new(&source, "", "").unwrap().render(&user("Hi"), None).unwrap();
    assert!(
        rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"),
        "{rendered}"
    );
    assert!(rendered.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_is_identical_run_to_run_and_counts_tokens() {
    let engine = engine(2048);
    let a = generate(&engine, user("What is the capital of France?"), greedy(24)).await.unwrap();
    let b = generate(&engine, user("What is the capital of France?"), greedy(24)).await.unwrap();
    assert_eq!(a.text, b.text);
    assert!(!a.text.trim().is_empty());
    assert!(a.completion_tokens >= 1 && a.completion_tokens <= 24);
    // The default system prompt is in the prompt: well over the ~10 tokens of the user turn.
    assert!(a.prompt_tokens > 25, "{}", a.prompt_tokens);
    let stats = engine.stats();
    assert_eq!(stats.active, 0);
    assert_eq!(stats.kv_cells_used, 0);
    assert_eq!(stats.finished_total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_are_whole_utf8_even_for_multibyte_text() {
    let engine = engine(2048);
    let out = generate(&engine, user("Écris une phrase en français avec des accents: é, è, à, ç. Ajoute un emoji 🌍."), greedy(40)).await.unwrap();
    // Each piece is a String, so valid UTF-8 by construction; no replacement characters means no
    // multi-byte character was split and patched over.
    assert!(out.pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{:?}", out.pieces);
    assert!(!out.text.is_ascii(), "expected non-ASCII output: {}", out.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_stops_with_length() {
    let engine = engine(2048);
    let out = generate(&engine, user("Write a long story about a dragon."), greedy(7)).await.unwrap();
    assert_eq!(out.reason, FinishReason::Length);
    assert_eq!(out.completion_tokens, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_plus_max_tokens_beyond_context_names_both_numbers() {
    let engine = engine(256);
    let err = generate(&engine, user("Hi"), greedy(1000)).await.err().expect("refused");
    let EngineError::ContextLengthExceeded { context, requested, prompt_tokens, max_tokens } = err.clone() else {
        panic!("unexpected {err:?}");
    };
    assert_eq!((context, max_tokens), (128, 1000), "256 cells over 2 sequences");
    assert_eq!(requested, u64::from(prompt_tokens) + 1000);
    let message = err.to_string();
    assert!(message.contains("128") && message.contains(&requested.to_string()), "{message}");
    // The engine still serves afterwards.
    assert!(generate(&engine, user("Hi"), greedy(4)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_sequences_get_their_solo_greedy_answers() {
    let engine = engine(4096);
    let solo_a = generate(&engine, user("Name a planet."), greedy(20)).await.unwrap().text;
    let solo_b = generate(&engine, user("Name an ocean."), greedy(20)).await.unwrap().text;
    let (a, b) = tokio::join!(
        generate(&engine, user("Name a planet."), greedy(20)),
        generate(&engine, user("Name an ocean."), greedy(20)),
    );
    assert_eq!(a.unwrap().text, solo_a);
    assert_eq!(b.unwrap().text, solo_b);
}
