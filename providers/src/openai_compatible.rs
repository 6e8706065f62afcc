//! Every API that speaks `OpenAI`'s chat completions: `OpenAI` itself, Azure `OpenAI` (its own
//! URL scheme and `api-key` header), and self-hosted servers (vLLM, llama-server, Ollama…).
//! Failures before the first byte are retried (see [`crate::retry`]); streams are passed through
//! unbuffered: each upstream SSE event becomes a chunk as it arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use tracing::warn;

use crate::anthropic;
use crate::circuit::counts_against_provider;
use crate::pool::{Lease, Pool};
use crate::provider::{ChunkStream, Provider};
use crate::retry::{retryable_status, RetryPolicy};
use crate::transport::{Destination, HttpClient, UpstreamResponse};
use crate::wire::{ChatChunk, ChatRequest, ChatResponse, ErrorBody, ErrorDetail, StreamOptions};
use crate::{ProviderConfig, ProviderError, ProviderKind};

/// How requests are addressed and authenticated.
#[derive(Debug)]
enum Dialect {
    /// `{base}/chat/completions`, `Authorization: Bearer`; one base or a balanced pool.
    OpenAi { pool: Pool },
    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=…`, `api-key`.
    Azure { base: String, api_version: String, deployments: HashMap<String, String> },
    /// `{base}/v1/messages`, `x-api-key` and `anthropic-version`; bodies translated both ways.
    /// `url` is parsed once; `None` when the configured base does not make a URL.
    Anthropic { url: Option<Destination>, max_output_tokens: HashMap<String, u32> },
}

/// A remote provider speaking `OpenAI`'s wire format.
pub struct OpenAiCompatible {
    name: String,
    dialect: Dialect,
    /// `{base}/chat/completions` of each pooled endpoint, parsed once (not per request).
    chat_urls: HashMap<String, Destination>,
    /// Content type, the dialect's key header (marked sensitive) and version header, built once.
    headers: Vec<(HeaderName, HeaderValue)>,
    client: HttpClient,
    timeout_ms: u64,
    retry: RetryPolicy,
    /// The API key, to take out of the provider's error messages should it echo it (only keys
    /// long enough that replacing them cannot mangle ordinary text).
    secret: Option<Arc<str>>,
}

impl std::fmt::Debug for OpenAiCompatible {
    // Hand-written so the API key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible").field("name", &self.name).field("dialect", &self.dialect).finish_non_exhaustive()
    }
}

/// One failed attempt, and whether another may help.
struct Failure {
    error: ProviderError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    const fn fatal(error: ProviderError) -> Self {
        Self { error, retryable: false, retry_after: None }
    }
}

type Events = BoxStream<'static, Result<eventsource_stream::Event, String>>;

impl OpenAiCompatible {
    /// Builds the provider; `api_key` is the value of the configured `api_key_env`.
    pub fn new(config: &ProviderConfig, api_key: Option<&str>, client: HttpClient) -> Self {
        let bases: Vec<String> = if config.endpoints.is_empty() {
            config.base_url.iter().cloned().collect()
        } else {
            config.endpoints.clone()
        };
        let base = bases.first().map(|b| b.trim_end_matches('/').to_owned()).unwrap_or_default();
        let dialect = if config.kind == ProviderKind::Anthropic {
            let base = if base.is_empty() { "https://api.anthropic.com".to_owned() } else { base };
            Dialect::Anthropic {
                url: Destination::parse(&format!("{base}/v1/messages")),
                max_output_tokens: config.models.iter().filter_map(|m| Some((m.name.clone(), m.max_output_tokens?))).collect(),
            }
        } else if config.kind == ProviderKind::Azure {
            Dialect::Azure {
                base,
                api_version: config.api_version.clone().unwrap_or_default(),
                deployments: config
                    .models
                    .iter()
                    .map(|m| (m.name.clone(), m.deployment.clone().unwrap_or_else(|| m.name.clone())))
                    .collect(),
            }
        } else {
            Dialect::OpenAi { pool: Pool::new(&bases) }
        };
        let chat_urls = bases
            .iter()
            .map(|b| b.trim_end_matches('/'))
            .filter_map(|b| Some((b.to_owned(), Destination::parse(&format!("{b}/chat/completions"))?)))
            .collect();
        let headers = request_headers(config.kind, api_key);
        let secret = api_key.map(str::trim).filter(|k| k.len() >= MIN_SCRUBBED_KEY).map(Arc::from);
        Self { name: config.name.clone(), dialect, chat_urls, headers, client, timeout_ms: config.timeout_ms, retry: config.retry_policy(), secret }
    }

    fn timeout(&self) -> ProviderError {
        ProviderError::Timeout { provider: self.name.clone(), timeout_ms: self.timeout_ms }
    }

    fn upstream(&self, status: Option<u16>, message: String) -> ProviderError {
        ProviderError::Upstream { provider: self.name.clone(), status, message }
    }

    /// The body to send for `req` in this provider's dialect, serialised once for every attempt.
    fn body(&self, req: &ChatRequest) -> Result<bytes::Bytes, ProviderError> {
        let encoded = match &self.dialect {
            Dialect::Anthropic { .. } if req.raw_prompt => {
                return Err(ProviderError::InvalidRequest { message: format!("provider {:?} (Anthropic) has no legacy completions endpoint; use chat completions", self.name), param: Some("model".into()) });
            }
            Dialect::Anthropic { max_output_tokens, .. } => {
                serde_json::to_vec(&anthropic::request_body(req, max_output_tokens.get(&req.model).copied())?)
            }
            Dialect::OpenAi { .. } | Dialect::Azure { .. } if req.raw_prompt => serde_json::to_vec(&completion_body(req)?),
            Dialect::OpenAi { .. } | Dialect::Azure { .. } => serde_json::to_vec(req),
        };
        encoded
            .map(bytes::Bytes::from)
            .map_err(|e| ProviderError::InvalidRequest { message: format!("request cannot be encoded: {e}"), param: None })
    }

    /// Where a request for `model` to `endpoint` goes (`lease`: the pooled endpoint chosen).
    fn destination(&self, model: &str, lease: Option<&Lease>, endpoint: Endpoint) -> Option<Destination> {
        match &self.dialect {
            Dialect::OpenAi { .. } => {
                let base = lease.map_or("", |l| l.base.as_str());
                match self.chat_urls.get(base) {
                    Some(to) if endpoint == Endpoint::Chat => Some(to.clone()),
                    _ => Destination::parse(&format!("{base}/{}", endpoint.path())),
                }
            }
            Dialect::Azure { base, api_version, deployments } => {
                let deployment = deployments.get(model).map_or(model, String::as_str);
                // api_version is a date-like token (`2024-10-21`): nothing in it needs escaping.
                Destination::parse(&format!("{base}/openai/deployments/{deployment}/{}?api-version={api_version}", endpoint.path()))
            }
            Dialect::Anthropic { url, .. } => url.clone(),
        }
    }

    /// One attempt: the response once its status is known to be a success. A pooled endpoint is
    /// held until the answer's head arrives, and its health updated from the outcome.
    async fn send_once(&self, model: &str, body: &bytes::Bytes, endpoint: Endpoint) -> Result<UpstreamResponse, Failure> {
        let pool = match &self.dialect {
            Dialect::OpenAi { pool } => Some(pool),
            Dialect::Azure { .. } | Dialect::Anthropic { .. } => None,
        };
        let lease = pool.map(|p| p.acquire(Instant::now()));
        let result = self.send_to(model, body, lease.as_ref(), endpoint).await;
        if let (Some(pool), Some(lease)) = (pool, &lease) {
            // Client errors are the request's fault, not the endpoint's.
            let healthy = match &result {
                Ok(_) => true,
                Err(f) => !counts_against_provider(&f.error),
            };
            pool.finish(lease, healthy, Instant::now());
        }
        result
    }

    async fn send_to(&self, model: &str, body: &bytes::Bytes, lease: Option<&Lease>, endpoint: Endpoint) -> Result<UpstreamResponse, Failure> {
        let Some(to) = self.destination(model, lease, endpoint) else {
            return Err(Failure::fatal(self.upstream(None, format!("the {} URL of this provider is not a valid URL", endpoint.path()))));
        };
        let response = match tokio::time::timeout(Duration::from_millis(self.timeout_ms), self.client.post(&to, &self.headers, body.clone())).await {
            Err(_) => return Err(Failure::fatal(self.timeout())),
            Ok(Err(e)) if e.timed_out => return Err(Failure::fatal(self.timeout())),
            // No answer at all (refused, reset, DNS, TLS): the request never reached the model.
            Ok(Err(e)) => return Err(Failure { error: self.upstream(None, e.message), retryable: true, retry_after: None }),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_s = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Err(Failure {
            error: self.status_error(status, retry_after_s, &body),
            retryable: retryable_status(status.as_u16()),
            retry_after: retry_after_s.map(Duration::from_secs),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut retry = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(failure) => {
                    let wait = (failure.retryable && retry < self.retry.max_retries)
                        .then(|| self.retry.delay(retry, failure.retry_after))
                        .flatten();
                    let Some(wait) = wait else { return Err(failure.error) };
                    warn!(provider = %self.name, retry = retry + 1, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), error = %failure.error, "retrying upstream");
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
            }
        }
    }

    /// Opens a stream and reads its first event, so a failure before the first byte reaches
    /// the client can still be retried.
    async fn open_stream(&self, model: &str, body: &bytes::Bytes, endpoint: Endpoint) -> Result<(Option<eventsource_stream::Event>, Events), Failure> {
        let response = self.send_once(model, body, endpoint).await?;
        let mut events: Events = response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string())).boxed();
        let first = tokio::time::timeout(Duration::from_millis(self.timeout_ms), events.next()).await;
        match first {
            Err(_) => Err(Failure::fatal(self.timeout())),
            Ok(None) => Ok((None, events)),
            Ok(Some(Ok(event))) => Ok((Some(event), events)),
            Ok(Some(Err(e))) => Err(Failure {
                error: self.upstream(None, format!("stream broken before its first event: {e}")),
                retryable: true,
                retry_after: None,
            }),
        }
    }

    /// `err` without the API key in its text.
    fn scrubbed(secret: Option<&Arc<str>>, err: ProviderError) -> ProviderError {
        match secret {
            Some(secret) => err.without_secret(secret),
            None => err,
        }
    }

    /// The error for a non-success `status` with `body`, the key taken out of its text.
    fn status_error(&self, status: StatusCode, retry_after_s: Option<u64>, body: &[u8]) -> ProviderError {
        Self::scrubbed(self.secret.as_ref(), self.status_error_of(status, retry_after_s, body))
    }

    fn status_error_of(&self, status: StatusCode, retry_after_s: Option<u64>, body: &[u8]) -> ProviderError {
        let provider = self.name.clone();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return ProviderError::RateLimited { provider, retry_after_s };
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            // The gateway's own credentials were refused: not the client's doing (passing the 401
            // on would read as "your key is wrong"), and the provider's message may quote part of
            // the key ("Incorrect API key provided: sk-…abcd"), so it is not passed on.
            let message = format!("it refused the gateway's credentials (status {}): check the key in its api_key_env", status.as_u16());
            return ProviderError::Upstream { provider, status: Some(status.as_u16()), message };
        }
        let parsed: Option<ErrorBody> = match self.dialect {
            Dialect::Anthropic { .. } => anthropic::error_body(body),
            Dialect::OpenAi { .. } | Dialect::Azure { .. } => serde_json::from_slice(body).ok(),
        };
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

/// Keys shorter than this are not scrubbed from error texts (they would match ordinary words).
const MIN_SCRUBBED_KEY: usize = 8;

/// `value` with `secret` replaced in every string in it.
fn without_secret_in_json(value: serde_json::Value, secret: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains(secret) => Value::String(s.replace(secret, "[redacted]")),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| without_secret_in_json(v, secret)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, without_secret_in_json(v, secret))).collect()),
        other => other,
    }
}

/// `events`, ended by an error when no event arrives for `idle` (a stalled upstream must not hold
/// a client forever).
fn with_idle_timeout(events: Events, idle: Duration) -> Events {
    stream::unfold(Some(events), move |state| async move {
        let mut events = state?;
        match tokio::time::timeout(idle, events.next()).await {
            Ok(Some(event)) => Some((event, Some(events))),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no event for {} ms", idle.as_millis())), None)),
        }
    })
    .boxed()
}

/// `OpenAI` chunks from an Anthropic event stream; it ends after `message_stop` or an `error`.
fn anthropic_chunks(events: Events, provider: String) -> ChunkStream {
    let mut translator = anthropic::StreamTranslator::default();
    let mut done = false;
    events
        .map(move |event| -> Vec<Result<ChatChunk, ProviderError>> {
            if done {
                return Vec::new();
            }
            let upstream = |message: String| ProviderError::Upstream { provider: provider.clone(), status: None, message };
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    done = true;
                    return vec![Err(upstream(format!("stream broken: {e}")))];
                }
            };
            if event.data.trim().is_empty() {
                return Vec::new();
            }
            let data: serde_json::Value = match serde_json::from_str(&event.data) {
                Ok(data) => data,
                Err(e) => {
                    done = true;
                    return vec![Err(upstream(format!("unreadable event: {e}")))];
                }
            };
            match translator.event(&event.event, &data) {
                Ok(chunks) => {
                    done = event.event == "message_stop";
                    chunks.into_iter().map(Ok).collect()
                }
                Err(err) => {
                    done = true;
                    let err = match err {
                        ProviderError::Upstream { status, message, .. } => ProviderError::Upstream { provider: provider.clone(), status, message },
                        other => other,
                    };
                    vec![Err(err)]
                }
            }
        })
        .flat_map(stream::iter)
        .boxed()
}

/// The headers every request of a provider of `kind` carries: the JSON content type, the key in
/// the dialect's header (marked sensitive, so no debug output shows it) and Anthropic's version.
fn request_headers(kind: ProviderKind, api_key: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    let key = |value: String| {
        // A key with bytes no header can carry is left out: the provider answers 401, which says
        // what is wrong, where a panic here would not.
        HeaderValue::try_from(value).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        })
    };
    match kind {
        ProviderKind::Anthropic => {
            // Never `Authorization`: Anthropic authenticates with `x-api-key`.
            headers.push((HeaderName::from_static("anthropic-version"), HeaderValue::from_static(anthropic::API_VERSION)));
            if let Some(v) = api_key.and_then(|k| key(k.to_owned())) {
                headers.push((HeaderName::from_static("x-api-key"), v));
            }
        }
        ProviderKind::Azure => {
            if let Some(v) = api_key.and_then(|k| key(k.to_owned())) {
                headers.push((HeaderName::from_static("api-key"), v));
            }
        }
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            if let Some(v) = api_key.and_then(|k| key(format!("Bearer {k}"))) {
                headers.push((AUTHORIZATION, v));
            }
        }
    }
    headers
}

/// The longest `Retry-After` passed on: a provider's absurd value ("99999999999999999999", "inf")
/// must not reach clients as 2^64 - 1 seconds.
const MAX_RETRY_AFTER_S: u64 = 86_400;

/// A provider's `Retry-After` in whole seconds (rounded up, at most [`MAX_RETRY_AFTER_S`]).
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<f64>().ok().map(|s| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = s.max(0.0).ceil() as u64;
        secs.min(MAX_RETRY_AFTER_S)
    })
}

#[async_trait]
impl Provider for OpenAiCompatible {
    async fn complete(&self, mut req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        req.stream = None;
        req.stream_options = None;
        let request_body = self.body(&req)?;
        let body = self.answer_body(&req.model, &request_body, Endpoint::of(&req)).await?;
        if let Dialect::Anthropic { .. } = self.dialect {
            let value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| self.upstream(None, format!("unreadable message: {e}")))?;
            return anthropic::response_of(&value).map_err(|e| self.upstream(None, format!("unreadable message: {e}")));
        }
        if req.raw_prompt {
            let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| self.upstream(None, format!("unreadable text_completion: {e}")))?;
            return serde_json::from_value(chat_of_completion(value, false)).map_err(|e| self.upstream(None, format!("unreadable text_completion: {e}")));
        }
        serde_json::from_slice(&body).map_err(|e| self.upstream(None, format!("unreadable chat.completion: {e}")))
    }

    async fn stream(&self, mut req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        req.stream = Some(true);
        // Always ask for usage so the cost is exact; the gateway passes the usage chunk on only
        // to clients that asked for it.
        let mut options = req.stream_options.take().unwrap_or(StreamOptions { include_usage: None, extra: serde_json::Map::new() });
        options.include_usage = Some(true);
        req.stream_options = Some(options);
        let request_body = self.body(&req)?;
        let (first, rest) = self.with_retries(|| self.open_stream(&req.model, &request_body, Endpoint::of(&req))).await?;
        let provider = self.name.clone();
        let events = stream::iter(first.map(Ok)).chain(with_idle_timeout(rest, Duration::from_millis(self.timeout_ms)));
        let chunks = if let Dialect::Anthropic { .. } = self.dialect {
            anthropic_chunks(events.boxed(), provider)
        } else {
            openai_chunks(events.boxed(), provider, req.raw_prompt)
        };
        // An error event in the stream may echo the key too.
        let secret = self.secret.clone();
        Ok(chunks.map(move |chunk| chunk.map_err(|e| Self::scrubbed(secret.as_ref(), e))).boxed())
    }

    async fn embeddings(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        self.json_call(body, Endpoint::Embeddings).await
    }

    async fn responses(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        self.json_call(body, Endpoint::Responses).await
    }

    async fn responses_stream(&self, body: serde_json::Value) -> Result<crate::provider::ResponseEvents, ProviderError> {
        let (model, request_body) = self.json_request(&body, Endpoint::Responses)?;
        let (first, rest) = self.with_retries(|| self.open_stream(&model, &request_body, Endpoint::Responses)).await?;
        let provider = self.name.clone();
        let secret = self.secret.clone();
        let events = stream::iter(first.map(Ok)).chain(with_idle_timeout(rest, Duration::from_millis(self.timeout_ms)));
        Ok(events
            .take_while(|event| futures::future::ready(!matches!(event, Ok(e) if e.data.trim() == "[DONE]")))
            .filter_map(move |event| {
                let upstream = |message: String| ProviderError::Upstream { provider: provider.clone(), status: None, message };
                let out = match event {
                    Err(e) => Some(Err(upstream(format!("stream broken: {e}")))),
                    Ok(e) if e.data.trim().is_empty() => None,
                    Ok(e) => Some(serde_json::from_str::<serde_json::Value>(&e.data).map_err(|err| upstream(format!("unreadable event: {err}"))).map(|data| {
                        let kind = if e.event.is_empty() || e.event == "message" { data.get("type").and_then(serde_json::Value::as_str).unwrap_or("message").to_owned() } else { e.event };
                        // An event name is one line of printable ASCII; anything else is not passed on.
                        let kind = if kind.bytes().all(|b| b.is_ascii_graphic()) { kind } else { "message".to_owned() };
                        // The provider's error events are passed on: without the key.
                        let data = match secret.as_deref() {
                            Some(secret) if kind == "error" || kind == "response.failed" => without_secret_in_json(data, secret),
                            _ => data,
                        };
                        (kind, data)
                    })),
                };
                let out = out.map(|item| item.map_err(|e| Self::scrubbed(secret.as_ref(), e)));
                futures::future::ready(out)
            })
            .boxed())
    }
}

impl OpenAiCompatible {
    /// The model named in a JSON `body` for `endpoint` (embeddings, responses) and the body
    /// encoded once for every attempt; Anthropic has neither endpoint.
    fn json_request(&self, body: &serde_json::Value, endpoint: Endpoint) -> Result<(String, bytes::Bytes), ProviderError> {
        if let Dialect::Anthropic { .. } = self.dialect {
            return Err(ProviderError::InvalidRequest { message: format!("provider {:?} (Anthropic) has no {} endpoint", self.name, endpoint.path()), param: Some("model".into()) });
        }
        let model = body.get("model").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let encoded = serde_json::to_vec(body).map_err(|e| ProviderError::InvalidRequest { message: format!("request cannot be encoded: {e}"), param: None })?;
        Ok((model, bytes::Bytes::from(encoded)))
    }

    /// The whole body of a successful answer from `endpoint`, with retries.
    async fn answer_body(&self, model: &str, request_body: &bytes::Bytes, endpoint: Endpoint) -> Result<bytes::Bytes, ProviderError> {
        self.with_retries(|| async {
            let response = self.send_once(model, request_body, endpoint).await?;
            match tokio::time::timeout(Duration::from_millis(self.timeout_ms), response.bytes()).await {
                Err(_) => Err(Failure::fatal(self.timeout())),
                Ok(Err(e)) => Err(Failure { error: self.upstream(None, e), retryable: true, retry_after: None }),
                Ok(Ok(body)) => Ok(body),
            }
        })
        .await
    }

    /// One JSON request to `endpoint` (embeddings, responses), answered as the provider sent it.
    async fn json_call(&self, body: serde_json::Value, endpoint: Endpoint) -> Result<serde_json::Value, ProviderError> {
        let (model, request_body) = self.json_request(&body, endpoint)?;
        let answer = self.answer_body(&model, &request_body, endpoint).await?;
        serde_json::from_slice(&answer).map_err(|e| self.upstream(None, format!("unreadable {} answer: {e}", endpoint.path())))
    }
}

/// Which of the provider's endpoints a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    fn of(req: &ChatRequest) -> Self {
        if req.raw_prompt {
            Self::Completions
        } else {
            Self::Chat
        }
    }

    const fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
        }
    }
}

/// The `/completions` body of a legacy completion carried as a chat request: its one message is
/// the prompt; sampling fields and unknown fields go as sent.
fn completion_body(req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
    let prompt = req.prompt_text().ok_or_else(|| ProviderError::InvalidRequest { message: "the prompt must be text".into(), param: Some("prompt".into()) })?;
    let mut body = serde_json::to_value(req).map_err(|e| ProviderError::InvalidRequest { message: format!("request cannot be encoded: {e}"), param: None })?;
    if let serde_json::Value::Object(fields) = &mut body {
        fields.remove("messages");
        fields.remove("max_completion_tokens");
        fields.insert("prompt".into(), serde_json::Value::String(prompt));
        if let Some(max) = req.max_output_tokens() {
            fields.insert("max_tokens".into(), max.into());
        }
    }
    Ok(body)
}

/// A `text_completion` (or one of its stream chunks) in the chat shape: each choice's `text`
/// becomes the message content (or the delta's).
fn chat_of_completion(mut value: serde_json::Value, chunk: bool) -> serde_json::Value {
    use serde_json::{json, Value};
    if !value.is_object() {
        // Not a completion at all: left as it is, it fails to parse as one (an upstream error).
        return value;
    }
    value["object"] = json!(if chunk { "chat.completion.chunk" } else { "chat.completion" });
    if let Some(Value::Array(choices)) = value.get_mut("choices") {
        for choice in choices {
            let text = choice.get("text").cloned().unwrap_or_else(|| json!(""));
            let index = choice.get("index").cloned().unwrap_or_else(|| json!(0));
            let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
            *choice = if chunk {
                json!({"index": index, "delta": {"content": text}, "finish_reason": finish})
            } else {
                json!({"index": index, "message": {"role": "assistant", "content": text, "refusal": null}, "finish_reason": finish, "logprobs": null})
            };
        }
    }
    if value.get("created").is_none() {
        value["created"] = json!(0);
    }
    value
}

/// `OpenAI` chunks from an `OpenAI`-style event stream; it ends at `[DONE]`. An `error` object in
/// the stream, a broken stream or an unreadable chunk becomes an `Upstream` error.
fn openai_chunks(events: Events, provider: String, completion: bool) -> ChunkStream {
    events
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
                if completion {
                    let value = serde_json::from_str::<serde_json::Value>(&event.data).map_err(|e| upstream(format!("unreadable chunk: {e}")));
                    return Some(value.and_then(|v| serde_json::from_value::<ChatChunk>(chat_of_completion(v, true)).map_err(|e| upstream(format!("unreadable chunk: {e}")))));
                }
                Some(serde_json::from_str::<ChatChunk>(&event.data).map_err(|e| upstream(format!("unreadable chunk: {e}"))))
            }
        })
        .boxed()
}

/// Runs the upstream stream decoder (SSE framing, then the dialect's chunk translation) over a
/// body that arrives in `pieces`, all at once. The same code path as a live stream, without a
/// socket: for fuzzing and tests.
pub fn decode_stream(pieces: Vec<Vec<u8>>, anthropic: bool) -> Vec<Result<ChatChunk, ProviderError>> {
    let bytes = stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))));
    let events: Events = bytes.eventsource().map(|e| e.map_err(|e| e.to_string())).boxed();
    let chunks = if anthropic { anthropic_chunks(events, "fuzz".into()) } else { openai_chunks(events, "fuzz".into(), false) };
    // Every piece is ready at once and nothing here waits on a timer: one poll finishes it.
    futures::FutureExt::now_or_never(chunks.collect::<Vec<_>>()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_and_bounded() {
        let of = |v: &str| retry_after(&HeaderMap::from_iter([(RETRY_AFTER, http::HeaderValue::from_str(v).unwrap())]));
        assert_eq!(of("7"), Some(7));
        assert_eq!(of("0.2"), Some(1));
        assert_eq!(of("-3"), Some(0));
        assert_eq!(of("99999999999999999999"), Some(MAX_RETRY_AFTER_S));
        assert_eq!(of("inf"), Some(MAX_RETRY_AFTER_S));
        assert_eq!(of("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_split() {
        let body = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"},\"finish_reason\":null}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
            "data: {\"ignored\": true}\n\n",
        )
        .as_bytes();
        let whole = decode_stream(vec![body.to_vec()], false);
        assert_eq!(whole.len(), 2);
        assert!(whole.iter().all(Result::is_ok));
        for split in 1..body.len() {
            let pieces = vec![body[..split].to_vec(), body[split..].to_vec()];
            let parts = decode_stream(pieces, false);
            assert_eq!(format!("{parts:?}"), format!("{whole:?}"), "split at {split}");
        }
        let broken = decode_stream(vec![b"data: {not json}\n\n".to_vec()], false);
        assert!(matches!(broken.as_slice(), [Err(ProviderError::Upstream { .. })]));
    }
}
