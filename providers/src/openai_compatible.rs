//! Any API that speaks `OpenAI`'s chat completions: `OpenAI` itself, vLLM, llama-server, Ollama…
//! Streams are passed through unbuffered: each upstream SSE event becomes a chunk as it arrives.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode};

use crate::provider::{ChunkStream, Provider};
use crate::wire::{ChatChunk, ChatRequest, ChatResponse, ErrorBody, ErrorDetail};
use crate::{ProviderConfig, ProviderError};

/// A remote provider speaking `OpenAI`'s wire format.
pub struct OpenAiCompatible {
    name: String,
    url: String,
    api_key: Option<String>,
    client: Client,
    timeout_ms: u64,
}

impl std::fmt::Debug for OpenAiCompatible {
    // Hand-written so the API key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// Builds the provider; `api_key` is the value of the configured `api_key_env`.
    pub fn new(config: &ProviderConfig, api_key: Option<String>, client: Client) -> Self {
        let base = config.base_url.clone().or_else(|| config.endpoints.first().cloned()).unwrap_or_default();
        Self {
            name: config.name.clone(),
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            api_key,
            client,
            timeout_ms: config.timeout_ms,
        }
    }

    fn timeout(&self) -> ProviderError {
        ProviderError::Timeout { provider: self.name.clone(), timeout_ms: self.timeout_ms }
    }

    fn transport(&self, err: &reqwest::Error) -> ProviderError {
        if err.is_timeout() {
            return self.timeout();
        }
        ProviderError::Upstream { provider: self.name.clone(), status: None, message: err.to_string() }
    }

    /// Sends the request and turns any non-success status into a typed error.
    async fn send(&self, req: &ChatRequest) -> Result<Response, ProviderError> {
        let mut builder = self.client.post(&self.url).json(req);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = tokio::time::timeout(Duration::from_millis(self.timeout_ms), builder.send())
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_s = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Err(self.status_error(status, retry_after_s, &body))
    }

    fn status_error(&self, status: StatusCode, retry_after_s: Option<u64>, body: &[u8]) -> ProviderError {
        let provider = self.name.clone();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return ProviderError::RateLimited { provider, retry_after_s };
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        if status.is_client_error() {
            let body = parsed.unwrap_or_else(|| ErrorBody {
                error: ErrorDetail {
                    message: format!("{provider} rejected the request with status {}", status.as_u16()),
                    kind: "invalid_request_error".into(),
                    param: None,
                    code: None,
                },
            });
            return ProviderError::Rejected { provider, status: status.as_u16(), body: Box::new(body) };
        }
        let message = parsed.map_or_else(|| format!("status {}", status.as_u16()), |b| b.error.message);
        ProviderError::Upstream { provider, status: Some(status.as_u16()), message }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<f64>().ok().map(|s| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = s.max(0.0).ceil() as u64;
        secs
    })
}

#[async_trait]
impl Provider for OpenAiCompatible {
    async fn complete(&self, mut req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        req.stream = None;
        req.stream_options = None;
        let response = self.send(&req).await?;
        let body = tokio::time::timeout(Duration::from_millis(self.timeout_ms), response.bytes())
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&body).map_err(|e| ProviderError::Upstream {
            provider: self.name.clone(),
            status: None,
            message: format!("unreadable chat.completion: {e}"),
        })
    }

    async fn stream(&self, mut req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        req.stream = Some(true);
        let response = self.send(&req).await?;
        let provider = self.name.clone();
        let events = response.bytes_stream().eventsource();
        let chunks = events
            .take_while(|event| futures::future::ready(!matches!(event, Ok(e) if e.data.trim() == "[DONE]")))
            .filter_map(move |event| {
                let provider = provider.clone();
                async move {
                    let upstream = |message: String| ProviderError::Upstream { provider: provider.clone(), status: None, message };
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => return Some(Err(upstream(format!("stream broken: {e}")))),
                    };
                    if event.data.trim().is_empty() {
                        return None;
                    }
                    if let Ok(body) = serde_json::from_str::<ErrorBody>(&event.data) {
                        return Some(Err(upstream(body.error.message)));
                    }
                    Some(serde_json::from_str::<ChatChunk>(&event.data).map_err(|e| upstream(format!("unreadable chunk: {e}"))))
                }
            });
        Ok(chunks.boxed())
    }
}
