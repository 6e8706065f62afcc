use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::wire::{ChatChunk, ChatRequest, ChatResponse, Choice, ResponseMessage, Usage};
use crate::ProviderError;

/// A stream of completion chunks; an `Err` ends it.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// A Responses-API event stream as the provider sent it: `(event type, data)`; an `Err` ends it.
pub type ResponseEvents = BoxStream<'static, Result<(String, serde_json::Value), ProviderError>>;

/// Anything that answers a chat request: a remote API or the embedded engine.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Answers in one piece.
    async fn complete(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError>;
    /// Answers as a stream of chunks. Errors that happen before the first chunk are returned
    /// here, so the caller can still answer with a real status.
    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, ProviderError>;
    /// `POST /embeddings` with this body (its `model` already the provider's name), answered
    /// as the provider sent it. Providers without embeddings refuse.
    async fn embeddings(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        let _ = body;
        Err(ProviderError::InvalidRequest { message: "this provider has no embeddings endpoint".into(), param: Some("model".into()) })
    }
    /// `POST /responses` (not streamed), answered as the provider sent it.
    async fn responses(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        let _ = body;
        Err(ProviderError::InvalidRequest { message: "this provider does not speak the Responses API".into(), param: Some("model".into()) })
    }
    /// `POST /responses` with `stream: true`: the provider's events. Errors before the first event
    /// are returned here.
    async fn responses_stream(&self, body: serde_json::Value) -> Result<ResponseEvents, ProviderError> {
        let _ = body;
        Err(ProviderError::InvalidRequest { message: "this provider does not speak the Responses API".into(), param: Some("model".into()) })
    }
}

/// Waits for a stream's first item, so that a failure before it still gets a status of its own
/// (and the fallbacks): the stream whole again (its first item put back), the error it opened
/// with, or `ended()` when it ended before any item.
pub async fn peek_first<T: Send + 'static>(
    mut items: BoxStream<'static, Result<T, ProviderError>>,
    ended: impl FnOnce() -> ProviderError,
) -> Result<BoxStream<'static, Result<T, ProviderError>>, ProviderError> {
    match items.next().await {
        Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) }).chain(items).boxed()),
        Some(Err(err)) => Err(err),
        None => Err(ended()),
    }
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
            if let Some(serde_json::Value::Array(calls)) = c.delta.extra.get("tool_calls") {
                merge_tool_calls(&mut target.message, calls);
            }
            if c.finish_reason.is_some() {
                target.finish_reason = c.finish_reason;
            }
            if let Some(serde_json::Value::Object(logprobs)) = c.logprobs {
                merge_logprobs(target, logprobs);
            }
        }
    }
    let mut response = response.ok_or_else(|| ProviderError::Upstream {
        provider: "stream".into(),
        status: None,
        message: "the stream ended before any chunk".into(),
    })?;
    for choice in &mut choices {
        // A message that only calls tools has null content, as in a non-streamed answer.
        if choice.message.extra.contains_key("tool_calls") && choice.message.content.as_deref() == Some("") {
            choice.message.content = None;
        }
    }
    response.choices = choices;
    response.usage = usage;
    Ok(response)
}

/// Adds a chunk's `logprobs` (`content` and `refusal` lists of token entries) to the choice's.
fn merge_logprobs(choice: &mut Choice, chunk: serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    let whole = choice.logprobs.get_or_insert_with(|| serde_json::json!({"content": null, "refusal": null}));
    let Value::Object(whole) = whole else { return };
    for (key, value) in chunk {
        match (whole.get_mut(&key), value) {
            (Some(Value::Array(list)), Value::Array(more)) => list.extend(more),
            (Some(slot), value) if slot.is_null() => *slot = value,
            (None, value) => {
                whole.insert(key, value);
            }
            _ => {}
        }
    }
}

/// Adds streamed tool-call deltas (`index`, then `id`/`type`/`function.name` once and
/// `function.arguments` in pieces) to the message's `tool_calls`.
fn merge_tool_calls(message: &mut ResponseMessage, deltas: &[serde_json::Value]) {
    use serde_json::{json, Value};
    let calls = message.extra.entry("tool_calls").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(calls) = calls else { return };
    for delta in deltas {
        let index = delta.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok()).unwrap_or(calls.len());
        while calls.len() <= index {
            calls.push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
        }
        let call = &mut calls[index];
        for key in ["id", "type"] {
            if let Some(v) = delta.get(key).filter(|v| v.is_string()) {
                call[key] = v.clone();
            }
        }
        if let Some(name) = delta.pointer("/function/name").and_then(Value::as_str) {
            call["function"]["name"] = json!(name);
        }
        if let Some(piece) = delta.pointer("/function/arguments").and_then(Value::as_str) {
            let so_far = call["function"]["arguments"].as_str().unwrap_or_default().to_owned();
            call["function"]["arguments"] = json!(so_far + piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::collect_stream;
    use crate::wire::ChatChunk;

    #[allow(clippy::needless_pass_by_value)]
    fn chunk(delta: serde_json::Value, logprobs: serde_json::Value) -> ChatChunk {
        serde_json::from_value(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": null, "logprobs": logprobs}]}))
        .unwrap()
    }

    #[tokio::test]
    async fn a_collected_answer_has_every_chunks_logprobs_in_order() {
        let entry = |t: &str| json!({"token": t, "logprob": -0.1, "bytes": t.as_bytes(), "top_logprobs": []});
        let chunks = vec![
            chunk(json!({"role": "assistant", "content": ""}), json!(null)),
            chunk(json!({"content": "Hello"}), json!({"content": [entry("Hel"), entry("lo")], "refusal": null})),
            chunk(json!({"content": " you"}), json!({"content": [entry(" you")], "refusal": null})),
        ];
        let stream = futures::stream::iter(chunks.into_iter().map(Ok));
        let response = collect_stream(Box::pin(stream)).await.unwrap();
        let logprobs = response.choices[0].logprobs.clone().unwrap();
        let tokens: Vec<&str> = logprobs["content"].as_array().unwrap().iter().map(|e| e["token"].as_str().unwrap()).collect();
        assert_eq!(tokens, ["Hel", "lo", " you"]);
        assert_eq!(logprobs["refusal"], json!(null));
        assert_eq!(response.choices[0].message.content.as_deref(), Some("Hello you"));
    }
}
