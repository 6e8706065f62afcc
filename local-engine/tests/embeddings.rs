//! Sentence embeddings with the real all-MiniLM-L6-v2 GGUF (`make embedding-model` makes it).
//! Every test is skipped, with a message, when the model file is absent.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use local_engine::{Embedder, EmbeddingConfig, EngineError};

mod common;

/// The first 8 components of the embedding of "hello world", computed in numpy from the fp32
/// safetensors weights (BERT forward with erf GELU, mean pooling over [CLS] hello world [SEP],
/// L2 normalisation); they agree with sentence-transformers' output for this model.
const HELLO_WORLD_HEAD: [f32; 8] = [-0.034_477, 0.031_023, 0.006_735, 0.026_109, -0.039_362, -0.160_302, 0.066_924, -0.006_441];

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2.f16.gguf")
}

/// One embedder for the whole test binary (loading is the slow part); None when the model is absent.
fn embedder() -> Option<&'static Embedder> {
    static EMBEDDER: OnceLock<Option<Embedder>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            let path = model_path();
            if !path.is_file() {
                eprintln!("skipping: {} is missing (run `make embedding-model`)", path.display());
                return None;
            }
            let mut config = EmbeddingConfig::with_model(path);
            config.threads = 2;
            Some(Embedder::load(&config).expect("the embedding model loads"))
        })
        .as_ref()
}

fn embed_one(e: &Embedder, text: &str) -> Vec<f32> {
    let (mut vectors, _) = e.embed(&[text.to_owned()]).expect("embeds");
    assert_eq!(vectors.len(), 1);
    vectors.remove(0)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn embedder_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Embedder>();
}

#[test]
fn dimensions_and_context() {
    let Some(e) = embedder() else { return };
    assert_eq!(e.dimensions(), 384);
    assert_eq!(e.max_input_tokens(), 512);
    // [CLS] hello world [SEP]
    assert_eq!(e.count_tokens("hello world").unwrap(), 4);
    assert_eq!(e.count_tokens("Hello, World!").unwrap(), 6);
}

#[test]
fn output_is_unit_norm_and_deterministic() {
    let Some(e) = embedder() else { return };
    let text = "The quick brown fox jumps over the lazy dog.";
    let a = embed_one(e, text);
    let b = embed_one(e, text);
    assert_eq!(a.len(), 384);
    let norm = dot(&a, &a).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert_eq!(a, b, "the same text twice gives identical vectors");
}

#[test]
fn matches_the_reference_for_hello_world() {
    let Some(e) = embedder() else { return };
    let (vectors, tokens) = e.embed(&["hello world".to_owned()]).unwrap();
    assert_eq!(tokens, 4);
    let head = &vectors[0][..8];
    let diff = max_abs_diff(head, &HELLO_WORLD_HEAD);
    eprintln!("hello world: {head:?} (max diff to the reference {diff})");
    assert!(diff < 1e-2, "got {head:?}, expected {HELLO_WORLD_HEAD:?} (max diff {diff})");
}

#[test]
fn a_batch_equals_each_input_alone() {
    let Some(e) = embedder() else { return };
    let inputs: Vec<String> = [
        "How do I reset my password?",
        "hello world",
        "",
        "The tide comes in twice a day.",
        "Rust's ownership model prevents data races at compile time, which is why the borrow checker exists.",
        "a",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (batched, total) = e.embed(&inputs).unwrap();
    assert_eq!(batched.len(), inputs.len());
    let mut expected_total = 0;
    for (input, vector) in inputs.iter().zip(&batched) {
        let alone = embed_one(e, input);
        let diff = max_abs_diff(vector, &alone);
        assert!(diff < 1e-4, "{input:?}: batched and alone differ by {diff}");
        expected_total += e.count_tokens(input).unwrap() as u64;
    }
    assert_eq!(total, expected_total);
}

#[test]
fn inputs_beyond_one_batch_are_split() {
    let Some(e) = embedder() else { return };
    // 3 inputs of ~300 tokens: they cannot share a 512-token batch.
    let long: Vec<String> = (0..3).map(|i| format!("{i} ") + &"word ".repeat(297)).collect();
    for text in &long {
        let n = e.count_tokens(text).unwrap();
        assert!(n > 256 && n <= 512, "{n} tokens");
    }
    let (batched, _) = e.embed(&long).unwrap();
    for (text, vector) in long.iter().zip(&batched) {
        assert!(max_abs_diff(vector, &embed_one(e, text)) < 1e-4);
    }
    // 300 short inputs: three batches (of at most 512 tokens each), order kept.
    let many: Vec<String> = (0..300).map(|i| format!("sentence number {i}")).collect();
    let (vectors, _) = e.embed(&many).unwrap();
    assert_eq!(vectors.len(), 300);
    // A batch of ~100 sequences (~500 tokens) sums attention over many masked-out keys, which
    // changes the SIMD summation order: expect ~1e-4 rather than ~1e-8 for small batches.
    for i in [0, 101, 102, 203, 204, 299] {
        let diff = max_abs_diff(&vectors[i], &embed_one(e, &many[i]));
        assert!(diff < 1e-3, "input {i}: batched and alone differ by {diff}");
    }
}

#[test]
fn paraphrases_are_closer_than_unrelated_text() {
    let Some(e) = embedder() else { return };
    let (v, _) = e
        .embed(&[
            "How do I reset my password?".to_owned(),
            "I forgot my password, how can I change it?".to_owned(),
            "The tide comes in twice a day.".to_owned(),
        ])
        .unwrap();
    let paraphrase = dot(&v[0], &v[1]);
    let unrelated = dot(&v[0], &v[2]);
    eprintln!("cosine: paraphrase {paraphrase:.3}, unrelated {unrelated:.3}");
    assert!(paraphrase > unrelated + 0.3, "paraphrase {paraphrase}, unrelated {unrelated}");
}

#[test]
fn too_long_input_is_an_error() {
    let Some(e) = embedder() else { return };
    let long = "word ".repeat(600);
    let err = e.embed(&["short".to_owned(), long.clone()]).unwrap_err();
    assert_eq!(err, EngineError::InputTooLong { tokens: 602, max: 512 });
    assert!(err.to_string().contains("512"), "{err}");
    // Exactly at the limit is fine: 510 words + [CLS] + [SEP].
    let (v, tokens) = e.embed(&["word ".repeat(510)]).unwrap();
    assert_eq!((v.len(), tokens), (1, 512));
    // The embedder still works afterwards.
    assert_eq!(embed_one(e, "still alive").len(), 384);
}

#[test]
fn empty_call_is_empty() {
    let Some(e) = embedder() else { return };
    assert_eq!(e.embed(&[]).unwrap(), (Vec::new(), 0));
}

#[test]
fn concurrent_callers_get_their_own_answers() {
    let Some(e) = embedder() else { return };
    let texts: Vec<String> = (0..4).map(|i| format!("caller {i} asks about topic {i}")).collect();
    let expected: Vec<Vec<f32>> = texts.iter().map(|t| embed_one(e, t)).collect();
    std::thread::scope(|scope| {
        for (text, want) in texts.iter().zip(&expected) {
            scope.spawn(move || {
                for _ in 0..10 {
                    assert_eq!(&embed_one(e, text), want);
                }
            });
        }
    });
}

/// The embedder and the generation engine share llama.cpp's process-wide backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexists_with_the_generation_engine() {
    let Some(e) = embedder() else { return };
    let chat = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !chat.is_file() {
        eprintln!("skipping: {} is missing (run `make model`)", chat.display());
        return;
    }
    let before = tokio::task::spawn_blocking(move || embed_one(e, "hello world")).await.unwrap();
    let engine = common::engine_with(1024, 1, 4);
    let out = common::generate(&engine, common::user("Say hi."), common::greedy(4)).await.expect("the engine generates");
    assert!(out.completion_tokens > 0);
    let after = tokio::task::spawn_blocking(move || embed_one(e, "hello world")).await.unwrap();
    assert_eq!(before, after);
    engine.shutdown();
}

#[test]
fn missing_model_is_an_error() {
    let config = EmbeddingConfig::with_model("/nonexistent/model.gguf");
    assert!(matches!(Embedder::load(&config), Err(EngineError::Unavailable { .. })));
}

/// A chat model given as the embedding model is refused at load (llama.cpp would crash the
/// process encoding with it), and by the configuration check that calls the same test.
#[test]
fn a_chat_model_is_refused_as_an_embedding_model() {
    if embedder().is_none() {
        return;
    }
    let chat = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let reason = local_engine::not_an_embedding_model(&chat).expect("refused");
    assert!(reason.contains("is not an embedding model (llama with no llama.pooling_type"), "{reason}");
    match Embedder::load(&EmbeddingConfig::with_model(&chat)) {
        Err(EngineError::Unavailable { reason }) => assert!(reason.contains("is not an embedding model"), "{reason}"),
        other => panic!("a chat model loaded as an embedding model: {other:?}"),
    }
    assert_eq!(local_engine::not_an_embedding_model(&model_path()), None);
}

/// Latency of one call (release build): `cargo test --release -p local-engine --test embeddings -- --ignored --nocapture`.
#[test]
#[ignore = "timing report, not a check"]
fn latency_report() {
    let Some(e) = embedder() else { return };
    let sentences: Vec<String> = (0..16).map(|i| format!("This is short sentence number {i} about the weather today.")).collect();
    for n in [1, 16] {
        let inputs = &sentences[..n];
        e.embed(inputs).unwrap();
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            e.embed(inputs).unwrap();
        }
        let per_call = start.elapsed() / rounds;
        eprintln!("batch of {n:2}: {:.2} ms per call", per_call.as_secs_f64() * 1e3);
    }
    let start = Instant::now();
    for sentence in &sentences {
        e.embed(std::slice::from_ref(sentence)).unwrap();
    }
    eprintln!("16 calls of 1: {:.2} ms in all", start.elapsed().as_secs_f64() * 1e3);
    // A query behind an ingestion call of 512 chunks of ~100 tokens.
    let chunks: Vec<String> = (0..512).map(|i| format!("{i} ") + &"text ".repeat(97)).collect();
    let start = Instant::now();
    let ingestion = e.submit(&chunks, Arc::new(AtomicBool::new(false))).unwrap();
    e.embed(&sentences[..1]).unwrap();
    let query = start.elapsed();
    ingestion.recv().unwrap().unwrap();
    eprintln!(
        "1 query behind 512 chunks of ~100 tokens: query {:.1} ms, the chunks {:.1} ms",
        query.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn an_abandoned_request_stops_before_its_next_batch() {
    let Some(e) = embedder() else { return };
    let inputs: Vec<String> = (0..8).map(|i| format!("sentence number {i}")).collect();
    let gone = Arc::new(AtomicBool::new(true));
    match e.embed_unless_abandoned(&inputs, gone) {
        Err(EngineError::Unavailable { reason }) => assert!(reason.contains("abandoned"), "{reason}"),
        other => panic!("an abandoned request computed anyway: {other:?}"),
    }
    // A request still wanted is answered, and the thread serves the next one as usual.
    let (vectors, _) = e.embed_unless_abandoned(&inputs, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!(vectors.len(), 8);
}

/// Calls take turns a batch each: a query's single input queued behind a large ingestion call is
/// answered while that call still has batches to go, not after all of them.
#[test]
fn a_small_call_is_not_held_behind_a_large_one() {
    let Some(e) = embedder() else { return };
    // 40 inputs of ~300 tokens: one per 512-token batch, 40 batches.
    let large: Vec<String> = (0..40).map(|i| format!("{i} ") + &"word ".repeat(297)).collect();
    let large_answer = e.submit(&large, Arc::new(AtomicBool::new(false))).unwrap();
    let small_answer = e.submit(&["what is the refund policy?".to_owned()], Arc::new(AtomicBool::new(false))).unwrap();
    let (small, _) = small_answer.recv().unwrap().unwrap();
    assert_eq!(small.len(), 1);
    assert!(large_answer.try_recv().is_err(), "the small call was answered only after the large one");
    let (vectors, _) = large_answer.recv().unwrap().unwrap();
    assert_eq!(vectors.len(), 40);
    // Taking turns changes nothing in either answer.
    assert!(max_abs_diff(&small[0], &embed_one(e, "what is the refund policy?")) < 1e-4);
    assert!(max_abs_diff(&vectors[39], &embed_one(e, &large[39])) < 1e-4);
}
