//! The adapter that serves chat requests from the embedded engine.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use local_engine::{
    Confidence, EngineError, EngineHandle, GenerationEvent, GenerationRequest, GenerationStream, SamplingParams,
    TemplateMessage,
};
use serde_json::Map;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::provider::{collect_stream, ChunkStream, Provider};
use crate::wire::{ChatChunk, ChatRequest, ChatResponse, ChunkChoice, Delta, Usage};
use crate::ProviderError;

/// Serves chat requests from the embedded engine.
#[derive(Clone)]
pub struct LocalProvider {
    engine: EngineHandle,
}

impl LocalProvider {
    /// Wraps an engine.
    pub fn new(engine: EngineHandle) -> Self {
        Self { engine }
    }

    /// The engine behind it.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

/// Translates a chat request into the engine's terms, refusing what the engine cannot honour.
pub fn generation_request(req: &ChatRequest) -> Result<GenerationRequest, ProviderError> {
    let invalid = |message: &str, param: &str| ProviderError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param.to_owned()),
    };
    if req.n.unwrap_or(1) != 1 {
        return Err(invalid("the local engine returns one choice per request; n must be 1", "n"));
    }
    if let Some(format) = &req.response_format {
        if format.get("type").and_then(serde_json::Value::as_str) != Some("text") {
            return Err(invalid(
                "the local engine does not support structured output (response_format) yet",
                "response_format",
            ));
        }
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let content = match &m.content {
            None => String::new(),
            Some(c) => c.text().ok_or_else(|| {
                invalid(
                    "the local model accepts text content only",
                    &format!("messages[{i}].content"),
                )
            })?,
        };
        // The chat templates know `system`; `developer` is OpenAI's newer name for it.
        let role = if m.role == "developer" { "system".to_owned() } else { m.role.clone() };
        messages.push(TemplateMessage { role, content });
    }
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        #[allow(clippy::cast_sign_loss)]
        seed: req.seed.map(|s| s as u64),
        stop: req.stop.as_ref().map(crate::wire::Stop::to_vec).unwrap_or_default(),
        max_tokens: req.max_output_tokens(),
        logprobs: false,
    };
    Ok(GenerationRequest { messages, tools: req.tools.clone(), sampling })
}

fn engine_error(err: &EngineError) -> ProviderError {
    match err {
        EngineError::ContextLengthExceeded { .. } => ProviderError::ContextLengthExceeded { message: err.to_string() },
        EngineError::Overloaded { .. } => ProviderError::Overloaded { message: err.to_string(), retry_after_s: 1 },
        EngineError::Template { .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some("messages".into()) },
        EngineError::Unavailable { .. } | EngineError::Decode { .. } => ProviderError::Unavailable { message: err.to_string() },
    }
}

/// Unix seconds now (`created` of answers).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds chunks for one completion.
struct ChunkFactory {
    id: String,
    created: u64,
    model: String,
}

impl ChunkFactory {
    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                logprobs: None,
                extra: Map::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    fn usage(&self, prompt_tokens: u32, completion_tokens: u32) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: Some(Usage::new(prompt_tokens.into(), completion_tokens.into())),
            system_fingerprint: None,
            extra: Map::new(),
        }
    }
}

/// Turns engine events after `Started` into chunks: the role chunk first, text deltas, the
/// finishing chunk, then the usage chunk (the gateway drops it unless the client asked for it).
/// Where the finishing event's confidence is left, for [`LocalProvider::complete_with_confidence`].
type ConfidenceSlot = Arc<Mutex<Option<Confidence>>>;

fn chunks(events: GenerationStream, factory: ChunkFactory, confidence_slot: Option<ConfidenceSlot>) -> ChunkStream {
    let first = factory.chunk(Delta { role: Some("assistant".into()), content: Some(String::new()), ..Delta::default() }, None);
    let rest = UnboundedReceiverStream::new(events).flat_map(move |event| {
        let out: Vec<Result<ChatChunk, ProviderError>> = match event {
            GenerationEvent::Started { .. } => Vec::new(),
            GenerationEvent::Text(text) => {
                vec![Ok(factory.chunk(Delta { content: Some(text), ..Delta::default() }, None))]
            }
            GenerationEvent::Finished { reason, prompt_tokens, completion_tokens, confidence } => {
                if let Some(slot) = &confidence_slot {
                    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = confidence;
                }
                vec![Ok(factory.chunk(Delta::default(), Some(reason.as_str()))), Ok(factory.usage(prompt_tokens, completion_tokens))]
            }
            GenerationEvent::Failed(err) => vec![Err(engine_error(&err))],
        };
        futures::stream::iter(out)
    });
    futures::stream::once(async move { Ok(first) }).chain(rest).boxed()
}

impl LocalProvider {
    /// A complete answer and how sure the model was of it (the `cascade` strategy's signal).
    pub async fn complete_with_confidence(&self, req: ChatRequest) -> Result<(ChatResponse, Option<Confidence>), ProviderError> {
        let mut generation = generation_request(&req)?;
        generation.sampling.logprobs = true;
        let slot: ConfidenceSlot = Arc::new(Mutex::new(None));
        let response = collect_stream(self.start(generation, Some(Arc::clone(&slot))).await?).await?;
        let confidence = *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok((response, confidence))
    }

    /// Submits a generation and waits for the engine to accept its prompt.
    async fn start(&self, generation: GenerationRequest, confidence: Option<ConfidenceSlot>) -> Result<ChunkStream, ProviderError> {
        let mut events = self.engine.submit(generation).map_err(|e| engine_error(&e))?;
        // Wait for the engine to accept the prompt, so that its errors get a real status.
        match events.recv().await {
            Some(GenerationEvent::Started { .. }) => {}
            Some(GenerationEvent::Failed(err)) => return Err(engine_error(&err)),
            Some(other) => {
                return Err(ProviderError::Unavailable { message: format!("unexpected first engine event {other:?}") })
            }
            None => return Err(ProviderError::Unavailable { message: "the local engine dropped the request".into() }),
        }
        let factory = ChunkFactory {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: now_unix(),
            model: self.engine.config().name.clone(),
        };
        Ok(chunks(events, factory, confidence))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    async fn complete(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        collect_stream(self.stream(req).await?).await
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        self.start(generation_request(&req)?, None).await
    }
}
