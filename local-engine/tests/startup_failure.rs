//! A model that cannot be loaded fails the engine's start, visibly: `started` gives the reason,
//! `startup` says `Failed`, and requests are refused as the server's fault (`Unavailable`); the
//! configuration check (`switchyard check`) already refuses a model file cut short.

mod common;

use std::io::Read as _;

use common::{model, user};
use local_engine::{EngineConfig, EngineError, EngineHandle, GenerationEvent, GenerationRequest, SamplingParams, Startup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_fails_the_start_with_its_reason() {
    // The real model's first 8 MiB: its header and chat template read fine, its weights are cut.
    let truncated = std::env::temp_dir().join(format!("switchyard-truncated-{}.gguf", std::process::id()));
    let mut head = Vec::new();
    std::fs::File::open(model()).unwrap().take(8 << 20).read_to_end(&mut head).unwrap();
    std::fs::write(&truncated, &head).unwrap();
    assert!(local_engine::chat_template_of(&truncated).is_ok(), "the header alone reads");
    let mut config = EngineConfig::with_model(&truncated);
    config.context = 512;
    config.threads = 2;
    // `check` says so before any start: the header describes more tensor data than the file has.
    let problems = config.problems().join("\n");
    assert!(problems.contains("is cut short: 8388608 bytes where its tensors need"), "{problems}");
    let engine = EngineHandle::start(config).unwrap();
    let reason = engine.started().await.unwrap_err();
    assert!(reason.contains("cannot load"), "{reason}");
    assert_eq!(engine.startup(), Startup::Failed(reason));
    assert!(!engine.stats().loaded);
    let mut events = engine
        .submit(GenerationRequest { messages: user("Hi"), tools: None, sampling: SamplingParams::default(), raw_prompt: None, tenant: None })
        .unwrap();
    match events.recv().await {
        Some(GenerationEvent::Failed(EngineError::Unavailable { reason })) => assert!(reason.contains("could not start"), "{reason}"),
        other => panic!("expected the engine to refuse, got {other:?}"),
    }
    std::fs::remove_file(&truncated).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_loads_starts_serving() {
    let whole = EngineConfig::with_model(model());
    assert_eq!(whole.problems(), Vec::<String>::new(), "the whole file passes the check");
    let engine = common::engine(512);
    engine.started().await.unwrap();
    assert_eq!(engine.startup(), Startup::Serving);
}
