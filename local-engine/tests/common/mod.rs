//! Helpers shared by the real-model tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use local_engine::{
    EngineConfig, EngineError, EngineHandle, FinishReason, GenerationEvent, GenerationRequest, SamplingParams,
    TemplateMessage, TokenLogprob,
};

pub fn model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `make model`", path.display());
    path
}

pub fn engine(context: u32) -> EngineHandle {
    engine_with(context, 2, 16)
}

pub fn engine_with(context: u32, parallel: u32, queue: usize) -> EngineHandle {
    engine_with_prompt_cache(context, parallel, queue, EngineConfig::with_model(model()).prompt_cache_mib)
}

/// An engine whose host prompt cache holds `prompt_cache_mib` MiB (0: off).
pub fn engine_with_prompt_cache(context: u32, parallel: u32, queue: usize, prompt_cache_mib: u32) -> EngineHandle {
    let mut config = EngineConfig::with_model(model());
    config.context = context;
    config.parallel = parallel;
    config.queue = queue;
    config.threads = 2;
    config.prompt_cache_mib = prompt_cache_mib;
    EngineHandle::start(config).expect("engine starts")
}

pub fn user(text: &str) -> Vec<TemplateMessage> {
    vec![TemplateMessage { role: "user".into(), content: text.into() }]
}

pub struct Outcome {
    pub text: String,
    pub pieces: Vec<String>,
    /// The tokens reported, when `top_logprobs` asked for them.
    pub tokens: Vec<TokenLogprob>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub reason: FinishReason,
}

pub async fn generate(engine: &EngineHandle, messages: Vec<TemplateMessage>, sampling: SamplingParams) -> Result<Outcome, EngineError> {
    let mut events = engine.submit(GenerationRequest { messages, tools: None, sampling, raw_prompt: None, tenant: None })?;
    let mut pieces = Vec::new();
    let mut tokens = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_mins(2), events.recv()).await.expect("engine answers").expect("event");
        match event {
            GenerationEvent::Started { .. } => {}
            GenerationEvent::Token(t) => tokens.push(t),
            GenerationEvent::Text(t) => pieces.push(t),
            GenerationEvent::Finished { reason, prompt_tokens, completion_tokens, .. } => {
                return Ok(Outcome { text: pieces.concat(), pieces, tokens, prompt_tokens, completion_tokens, reason })
            }
            GenerationEvent::Failed(e) => return Err(e),
        }
    }
}

pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ..SamplingParams::default() }
}

