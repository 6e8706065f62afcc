use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::wire::{ChatChunk, ChatRequest, ChatResponse, Choice, ResponseMessage, Usage};
use crate::ProviderError;

/// A stream of completion chunks; an `Err` ends it.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// Anything that answers a chat request: a remote API or the embedded engine.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Answers in one piece.
    async fn complete(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError>;
    /// Answers as a stream of chunks. Errors that happen before the first chunk are returned
    /// here, so the caller can still answer with a real status.
    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, ProviderError>;
}

/// Folds a chunk stream into one response (used by providers that only stream).
pub async fn collect_stream(mut stream: ChunkStream) -> Result<ChatResponse, ProviderError> {
    let mut response: Option<ChatResponse> = None;
    let mut choices: Vec<Choice> = Vec::new();
    let mut usage: Option<Usage> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let r = response.get_or_insert_with(|| ChatResponse {
            id: chunk.id.clone(),
            object: "chat.completion".into(),
            created: chunk.created,
            model: chunk.model.clone(),
            choices: Vec::new(),
            usage: None,
            system_fingerprint: chunk.system_fingerprint.clone(),
            extra: serde_json::Map::new(),
        });
        r.model.clone_from(&chunk.model);
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
        for c in chunk.choices {
            let i = c.index as usize;
            while choices.len() <= i {
                let index = u32::try_from(choices.len()).unwrap_or(u32::MAX);
                choices.push(Choice {
                    index,
                    message: ResponseMessage::assistant(String::new()),
                    finish_reason: None,
                    logprobs: None,
                    extra: serde_json::Map::new(),
                });
            }
            let target = &mut choices[i];
            if let Some(text) = c.delta.content {
                target.message.content.get_or_insert_with(String::new).push_str(&text);
            }
            if c.finish_reason.is_some() {
                target.finish_reason = c.finish_reason;
            }
        }
    }
    let mut response = response.ok_or_else(|| ProviderError::Upstream {
        provider: "stream".into(),
        status: None,
        message: "the stream ended before any chunk".into(),
    })?;
    response.choices = choices;
    response.usage = usage;
    Ok(response)
}
