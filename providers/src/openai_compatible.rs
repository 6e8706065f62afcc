//! Every API that speaks `OpenAI`'s chat completions: `OpenAI` itself, Azure `OpenAI` (its own
//! URL scheme and `api-key` header), and self-hosted servers (vLLM, llama-server, Ollama…).
//! Failures before the first byte are retried (see [`crate::retry`]); streams are passed through
//! unbuffered: each upstream SSE event becomes a chunk as it arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::pool::{HeldLease, Lease, Pool};
use crate::provider::{ChunkStream, Provider};
use crate::retry::{retryable_status, RetryPolicy};
use crate::secret::Secret;
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
    secret: Option<Arc<Secret>>,
    /// Streams go without `stream_options`, their usage estimated: an Azure API version before
    /// 2024-09-01 refuses it (even the client's own), and so did this server once (a strict
    /// one: TGI, a `FastAPI` app forbidding extra fields).
    refuses_stream_options: AtomicBool,
    /// A request's output limit (its own or its `output_cap`) goes out as
    /// `max_completion_tokens` (`OpenAI`, Azure from 2024-09-01: their reasoning models refuse
    /// `max_tokens`), else as `max_tokens`.
    caps_completion_tokens: bool,
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
        let azure_from_2024_09 = azure_from_2024_09(config.api_version.as_deref().unwrap_or_default());
        let secret = api_key.map(str::trim).filter(|k| k.len() >= MIN_SCRUBBED_KEY).and_then(Secret::new).map(Arc::new);
        Self {
            name: config.name.clone(),
            dialect,
            chat_urls,
            headers,
            client,
            timeout_ms: config.timeout_ms,
            retry: config.retry_policy(),
            secret,
            refuses_stream_options: AtomicBool::new(config.kind == ProviderKind::Azure && !azure_from_2024_09),
            caps_completion_tokens: config.kind == ProviderKind::Openai || (config.kind == ProviderKind::Azure && azure_from_2024_09),
        }
    }

    fn timeout(&self) -> ProviderError {
        ProviderError::Timeout { provider: self.name.clone(), timeout_ms: self.timeout_ms }
    }

    fn upstream(&self, status: Option<u16>, message: String) -> ProviderError {
        ProviderError::Upstream { provider: self.name.clone(), status, message }
    }

    /// The failure of an answer with status 200 that held only an error saying `message`.
    fn error_answered(&self, message: String) -> ProviderError {
        Self::scrubbed(self.secret.as_ref(), self.upstream(Some(200), message))
    }

    /// The body to send for `req` in this provider's dialect, serialised once for every attempt.
    fn body(&self, req: &ChatRequest) -> Result<bytes::Bytes, ProviderError> {
        let limited;
        let req = match self.with_output_limit(req) {
            Some(moved) => {
                limited = moved;
                &limited
            }
            None => req,
        };
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

    /// `req` with its output-token limit (its own, else the budget's `output_cap`) in the one
    /// field this provider reads, or `None` where it is there already (or there is none): a
    /// client's `max_tokens` routed to `OpenAI`'s reasoning models would be refused, its
    /// `max_completion_tokens` ignored by self-hosted servers that predate the field.
    fn with_output_limit(&self, req: &ChatRequest) -> Option<ChatRequest> {
        let limit = req.max_output_tokens().or(req.output_cap)?;
        // (`max_completion_tokens`, `max_tokens`) as this provider should get them.
        let fields = if self.caps_completion_tokens { (Some(limit), None) } else { (None, Some(limit)) };
        if (req.max_completion_tokens, req.max_tokens) == fields {
            return None;
        }
        let mut moved = req.clone();
        (moved.max_completion_tokens, moved.max_tokens) = fields;
        Some(moved)
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
        // Given back if this attempt is dropped (the client went away) before it reports.
        let held = pool.map(|p| p.hold(Instant::now()));
        let result = self.send_to(model, body, held.as_ref().map(HeldLease::lease), endpoint).await;
        if let Some(held) = held {
            // Client errors are the request's fault, not the endpoint's.
            let healthy = match &result {
                Ok(_) => true,
                Err(f) => !counts_against_provider(&f.error),
            };
            held.finish(healthy, Instant::now());
        }
        result
    }

    async fn send_to(&self, model: &str, body: &bytes::Bytes, lease: Option<&Lease>, endpoint: Endpoint) -> Result<UpstreamResponse, Failure> {
        let Some(to) = self.destination(model, lease, endpoint) else {
            return Err(Failure::fatal(self.upstream(None, format!("the {} URL of this provider is not a valid URL", endpoint.path()))));
        };
        let response = match tokio::time::timeout(Duration::from_millis(self.timeout_ms), self.client.post(&to, &self.headers, body.clone())).await {
            Err(_) => return Err(Failure::fatal(self.timeout())),
            Ok(Err(e)) if e.timed_out && !e.connect => return Err(Failure::fatal(self.timeout())),
            // No answer at all (refused, reset, DNS, TLS, no connection within CONNECT_TIMEOUT):
            // the request never reached the model.
            Ok(Err(e)) => return Err(Failure { error: self.upstream(None, e.message), retryable: true, retry_after: None }),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let wait = retry_after(response.headers(), std::time::SystemTime::now());
        // The error's body is read within the same time, and only its start: a proxy that sends
        // the status and then stalls (or streams without end) must not hold the request.
        let body = error_body_start(response, Duration::from_millis(self.timeout_ms)).await;
        let error = self.status_error(status, wait.map(whole_seconds), &body);
        // A spent quota is not a passing limit: retrying it only delays the fallback.
        let retryable = retryable_status(status.as_u16()) && !error.is_spent_quota();
        Err(Failure { error, retryable, retry_after: wait })
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
                    warn!(provider = %self.name, retry = retry + 1, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), error = %failure.error.outline(), "retrying upstream");
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
            }
        }
    }

    /// Opens a stream and reads its first event, so a failure before the first byte reaches
    /// the client can still be retried.
    async fn open_stream(&self, model: &str, body: &bytes::Bytes, endpoint: Endpoint) -> Result<(Vec<eventsource_stream::Event>, Events), Failure> {
        let response = self.send_once(model, body, endpoint).await?;
        // The body's first bytes, kept until the first event: a server that answers the stream
        // with an error body and no events at all (LM Studio, TGI) said why in them.
        let head = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
        let kept = Arc::clone(&head);
        let bytes = response.bytes_stream().inspect(move |piece| {
            if let (Ok(piece), Ok(mut kept)) = (piece, kept.lock()) {
                if let Some(kept) = kept.as_mut() {
                    let room = ERROR_BODY_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&piece[..piece.len().min(room)]);
                }
            }
        });
        let mut events: Events = without_bom(bytes).eventsource().map(|e| e.map_err(|e| e.to_string())).boxed();
        // Anthropic's opening events (`message_start`, `ping`, a block's start) carry no answer:
        // they are read with the first that does, so an error that follows them (an overloaded
        // API) still comes before the first byte reaches the client, and can be retried.
        let mut opening = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(self.timeout_ms), events.next()).await;
            match next {
                Err(_) => return Err(Failure::fatal(self.timeout())),
                Ok(None) => {
                    let head = head.lock().ok().and_then(|mut head| head.take()).filter(|_| opening.is_empty());
                    let said: Option<serde_json::Value> = head.and_then(|head| serde_json::from_slice(head.strip_prefix(BOM).unwrap_or(&head)).ok());
                    if let Some(message) = said.as_ref().and_then(error_answer) {
                        return Err(Failure::fatal(self.error_answered(message)));
                    }
                    return Ok((opening, events));
                }
                Ok(Some(Ok(event))) => {
                    // Events came: the body's head is not kept any longer.
                    if let Ok(mut head) = head.lock() {
                        head.take();
                    }
                    if let Some(failure) = self.failed_at_once(&event, endpoint) {
                        return Err(failure);
                    }
                    let preamble = matches!(self.dialect, Dialect::Anthropic { .. })
                        && matches!(event.event.as_str(), "message_start" | "ping" | "content_block_start")
                        && opening.len() < MAX_OPENING_EVENTS;
                    opening.push(event);
                    if !preamble {
                        return Ok((opening, events));
                    }
                }
                Ok(Some(Err(e))) => {
                    let before = if opening.is_empty() { "its first event" } else { "its answer began" };
                    return Err(Failure { error: self.upstream(None, format!("stream broken before {before}: {e}")), retryable: true, retry_after: None });
                }
            }
        }
    }

    /// A stream whose `error` event comes before any answer failed before its first byte
    /// reached the client: retried like the status it stands for. Anthropic's `overloaded_error`
    /// (529), `api_error` (500) or `rate_limit_error` (429); a Responses stream's `error` event
    /// by its `code`: `rate_limit_exceeded` (429), `server_error` (500), `context_length_exceeded`
    /// (not retried), anything else the server's failure as it says it.
    fn failed_at_once(&self, event: &eventsource_stream::Event, endpoint: Endpoint) -> Option<Failure> {
        let anthropic = matches!(self.dialect, Dialect::Anthropic { .. });
        if !anthropic && endpoint != Endpoint::Responses {
            return None;
        }
        let data: serde_json::Value = serde_json::from_str(&event.data).ok()?;
        if event.event != "error" && data.get("type").and_then(serde_json::Value::as_str) != Some("error") {
            return None;
        }
        if !anthropic {
            return Some(self.responses_error_event(&data));
        }
        let (kind, message) = anthropic::error_event(&data);
        let status = anthropic::retry_status(kind);
        let error = if kind == "rate_limit_error" {
            // What an HTTP 429 from Anthropic gives, should it persist.
            let body = ErrorBody { error: ErrorDetail { message: message.to_owned(), kind: kind.to_owned(), param: None, code: None, innererror: None } };
            ProviderError::RateLimited { provider: self.name.clone(), retry_after_s: None, body: Some(Box::new(body)) }
        } else {
            self.upstream(status, format!("{kind}: {message}"))
        };
        Some(Failure { error: Self::scrubbed(self.secret.as_ref(), error), retryable: status.is_some(), retry_after: None })
    }

    /// The failure a Responses stream's opening `error` event stands for.
    fn responses_error_event(&self, data: &serde_json::Value) -> Failure {
        let detail = error_detail_of(data).unwrap_or_else(|| ErrorDetail { message: data.to_string(), kind: "server_error".into(), param: None, code: None, innererror: None });
        let (error, status) = match detail.code.as_deref() {
            Some("rate_limit_exceeded") => {
                let body = ErrorBody { error: ErrorDetail { kind: "rate_limit_error".into(), ..detail } };
                (ProviderError::RateLimited { provider: self.name.clone(), retry_after_s: None, body: Some(Box::new(body)) }, Some(429))
            }
            Some("context_length_exceeded") => (ProviderError::ContextLengthExceeded { message: detail.message }, None),
            Some("server_error") => (self.upstream(Some(500), detail.message), Some(500)),
            _ => (self.upstream(Some(200), detail.message), None),
        };
        Failure { error: Self::scrubbed(self.secret.as_ref(), error), retryable: status.is_some(), retry_after: None }
    }

    /// `err` without the API key in its text.
    fn scrubbed(secret: Option<&Arc<Secret>>, err: ProviderError) -> ProviderError {
        let err = err.printable();
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
        let body = body.strip_prefix(BOM).unwrap_or(body);
        let parsed: Option<ErrorBody> = match self.dialect {
            Dialect::Anthropic { .. } => anthropic::error_body(body),
            Dialect::OpenAi { .. } | Dialect::Azure { .. } => error_body_of(body),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Azure's 429 says only `"code": "429"`: the client gets OpenAI's type and code.
            let parsed = parsed.map(|mut body| {
                let detail = &mut body.error;
                if detail.code.as_deref().is_none_or(|c| c.bytes().all(|b| b.is_ascii_digit())) {
                    detail.code = Some("rate_limit_exceeded".into());
                }
                if detail.kind == "invalid_request_error" {
                    "rate_limit_error".clone_into(&mut detail.kind);
                }
                body
            });
            return ProviderError::RateLimited { provider, retry_after_s, body: parsed.map(Box::new) };
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            // The gateway's own credentials were refused: not the client's doing (passing the 401
            // on would read as "your key is wrong"), and the provider's message may quote part of
            // the key ("Incorrect API key provided: sk-…abcd"), so it is not passed on.
            let message = format!("it refused the gateway's credentials (status {}): check the key in its api_key_env", status.as_u16());
            return ProviderError::Upstream { provider, status: Some(status.as_u16()), message };
        }
        if status.is_client_error() {
            let mut body = parsed.unwrap_or_else(|| ErrorBody {
                error: ErrorDetail {
                    message: format!("{provider} rejected the request with status {}", status.as_u16()),
                    kind: "invalid_request_error".into(),
                    param: None,
                    code: None,
                    innererror: None,
                },
            });
            in_openai_terms(&mut body.error);
            // Every server words it its own way; clients that trim a conversation look for the code.
            if says_context_overflows(&body.error) {
                return ProviderError::ContextLengthExceeded { message: body.error.message };
            }
            return ProviderError::Rejected { provider, status: status.as_u16(), body: Box::new(body) };
        }
        let message = parsed.map_or_else(|| format!("status {}", status.as_u16()), |b| b.error.message);
        ProviderError::Upstream { provider, status: Some(status.as_u16()), message }
    }
}

/// Whether `err` is a server's refusal of the `stream_options` field (400 or `FastAPI`'s 422,
/// naming it as the parameter or in its message).
fn names_stream_options(err: &ProviderError) -> bool {
    matches!(err, ProviderError::Rejected { status: 400 | 422, body, .. }
        if body.error.param.as_deref() == Some("stream_options") || body.error.message.contains("stream_options"))
}

/// Whether an Azure `api-version` (`2024-10-21`, `2024-09-01-preview`) is from 2024-09-01 on,
/// when `stream_options` and `max_completion_tokens` came (a version not written as a date is
/// assumed recent).
fn azure_from_2024_09(api_version: &str) -> bool {
    let date = api_version.get(..10).filter(|d| d.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() }));
    date.is_none_or(|d| d >= "2024-09-01")
}

/// The error a server speaking `OpenAI`'s API sent, whatever its shape: `OpenAI`'s
/// `{"error":{"message","type","param","code"}}` (llama-server sends `code` as a number), vLLM's
/// `{"object":"error","message",…}`, `{"error":"text"}`, or a framework's `{"detail":…}`, alone or
/// as the first of a list (Google's Gemini API wraps its error in one: `[{"error": {…}}]`); a short
/// plain-text body is its own message. `None` for a chunk or an HTML page.
fn error_detail_of(value: &serde_json::Value) -> Option<ErrorDetail> {
    use serde_json::Value;
    if let Value::Array(items) = value {
        return items.first().filter(|first| first.is_object()).and_then(error_detail_of);
    }
    let text = |v: Option<&Value>| match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let (inner, message) = match value.get("error") {
        Some(Value::String(message)) => (value, message.clone()),
        Some(error @ Value::Object(_)) => (error, text(error.get("message")).unwrap_or_else(|| error.to_string())),
        _ if value.get("choices").is_none() && value.get("message").is_some() => (value, text(value.get("message"))?),
        _ => (value, text(value.get("detail"))?),
    };
    Some(ErrorDetail {
        message,
        kind: inner.get("type").and_then(Value::as_str).unwrap_or("invalid_request_error").to_owned(),
        param: text(inner.get("param")),
        code: text(inner.get("code")),
        innererror: inner.get("innererror").filter(|v| v.is_object()).cloned(),
    })
}

/// A self-hosted server's error in `OpenAI`'s terms: a class name for a type (vLLM's
/// `BadRequestError`) is `invalid_request_error`, and a code that only repeats the status
/// (llama-server's and vLLM's `400`) is none.
fn in_openai_terms(detail: &mut ErrorDetail) {
    if detail.kind.starts_with(|c: char| c.is_ascii_uppercase()) && !detail.kind.contains(['_', ' ']) {
        "invalid_request_error".clone_into(&mut detail.kind);
    }
    if detail.code.as_deref().is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())) {
        detail.code = None;
    }
}

/// True when a refusal says the prompt does not fit the model's context, in any server's words:
/// `OpenAI`'s code, vLLM's "maximum context length", llama-server's `exceed_context_size_error`,
/// TGI's "`inputs` tokens + `max_new_tokens` must be <= …".
fn says_context_overflows(detail: &ErrorDetail) -> bool {
    if detail.code.as_deref() == Some("context_length_exceeded") || detail.kind == "exceed_context_size_error" {
        return true;
    }
    let message = detail.message.to_ascii_lowercase();
    [
        "maximum context length",
        "context length exceeded",
        "exceeds the available context size",
        "context window",
        "max_new_tokens` must be <=",
        "must have less than",
        "longer than the maximum model length",
        "longer than the model's context length",
        "context length of only",
    ]
        .iter()
        .any(|phrase| message.contains(phrase))
}

/// The message of a 200 answer that is only an error — LM Studio, TGI and llama-server answer
/// some failures so (`{"error": "Model unloaded"}`, `{"object": "error", …}`) — or `None` for an
/// answer (a failed Responses object carries an `error` beside its own fields).
fn error_answer(value: &serde_json::Value) -> Option<String> {
    let is_error_object = value.get("object").and_then(serde_json::Value::as_str) == Some("error");
    let only_error = value.get("error").is_some_and(|e| !e.is_null()) && ["choices", "data", "output", "object", "id"].iter().all(|k| value.get(*k).is_none());
    (is_error_object || only_error).then(|| error_detail_of(value)).flatten().map(|detail| detail.message)
}

/// [`error_detail_of`] a response body, or its text when it is short plain text.
fn error_body_of(body: &[u8]) -> Option<ErrorBody> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        return error_detail_of(&value).map(|error| ErrorBody { error });
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    let plain = !text.is_empty() && text.len() <= 1000 && !text.starts_with('<');
    plain.then(|| ErrorBody { error: ErrorDetail { message: text.to_owned(), kind: "invalid_request_error".into(), param: None, code: None, innererror: None } })
}

/// How much of an error body is read: of an error answer's, and of a stream's body kept in case
/// an error body came instead of events (error objects are a few hundred bytes).
const ERROR_BODY_KEPT: usize = 64 * 1024;

/// Opening events read ahead of an Anthropic stream's answer at most (a server that sends only
/// pings is then passed on as it goes).
const MAX_OPENING_EVENTS: usize = 8;

/// Keys shorter than this are not scrubbed from error texts (they would match ordinary words).
const MIN_SCRUBBED_KEY: usize = 8;

/// `value` with every run of the key replaced in every string in it (object keys too).
fn without_secret_in_json(mut value: serde_json::Value, secret: &Secret) -> serde_json::Value {
    crate::error::each_string(&mut value, &|text: &mut String| {
        if let Some(clean) = secret.scrub(text) {
            *text = clean;
        }
    });
    value
}

/// A passed-through answer (`value`, parsed from `raw`) without the key: it may carry an error
/// that echoes it (a failed response). Walked only when `raw` holds a run of the key.
fn without_echoed_secret(value: serde_json::Value, raw: &[u8], secret: Option<&Secret>) -> serde_json::Value {
    match secret.filter(|secret| std::str::from_utf8(raw).is_ok_and(|text| secret.appears_in(text))) {
        Some(secret) => without_secret_in_json(value, secret),
        None => value,
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
            Err(_) => Some((Err(format!("{IDLE}{}", idle.as_millis())), None)),
        }
    })
    .boxed()
}

/// How [`with_idle_timeout`]'s error starts (the milliseconds follow).
const IDLE: &str = "no event for ms: ";

/// The first [`ERROR_BODY_KEPT`] bytes of an error answer's body: what arrived `within` this
/// time, before the body ended or broke.
async fn error_body_start(response: UpstreamResponse, within: Duration) -> bytes::Bytes {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunks = response.bytes_stream();
    let mut body = bytes::BytesMut::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, chunks.next()).await {
        body.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_KEPT - body.len())]);
        if body.len() >= ERROR_BODY_KEPT {
            break;
        }
    }
    body.freeze()
}

/// The error for a stream that broke with `e`: a stall past the provider's timeout is a
/// `Timeout` (504 `upstream_timeout`, counted as `timeout`), anything else `Upstream`.
fn broken_stream(provider: &str, e: &str) -> ProviderError {
    match e.strip_prefix(IDLE).and_then(|ms| ms.parse().ok()) {
        Some(timeout_ms) => ProviderError::Timeout { provider: provider.to_owned(), timeout_ms },
        None => ProviderError::Upstream { provider: provider.to_owned(), status: None, message: format!("stream broken: {e}") },
    }
}

/// `OpenAI` chunks from an Anthropic event stream; it ends after `message_stop` or an `error`. An
/// end before `message_stop` is an `Upstream` error: the answer was cut.
fn anthropic_chunks(events: Events, provider: String) -> ChunkStream {
    stream::unfold(Some((events, anthropic::StreamTranslator::default())), move |state| {
        let provider = provider.clone();
        async move {
            let (mut events, mut translator) = state?;
            let upstream = |message: String| ProviderError::Upstream { provider: provider.clone(), status: None, message };
            // A stream that breaks off still says what it reported of its usage (the prompt's
            // tokens), so the record need not estimate them.
            let broken = |translator: &anthropic::StreamTranslator, err: ProviderError| {
                let mut out: Vec<_> = translator.usage_so_far().map(Ok).into_iter().collect();
                out.push(Err(err));
                Some((out, None))
            };
            loop {
                let event = match events.next().await {
                    None => return broken(&translator, upstream("the stream ended before message_stop".into())),
                    Some(Err(e)) => return broken(&translator, broken_stream(&provider, &e)),
                    Some(Ok(event)) => event,
                };
                if event.data.trim().is_empty() {
                    continue;
                }
                let data: serde_json::Value = match serde_json::from_str(&event.data) {
                    Ok(data) => data,
                    Err(e) => return broken(&translator, upstream(format!("unreadable event: {e}"))),
                };
                match translator.event(&event.event, &data) {
                    Ok(chunks) if chunks.is_empty() => {}
                    Ok(chunks) => {
                        let stopped = event.event == "message_stop" || data.get("type").and_then(serde_json::Value::as_str) == Some("message_stop");
                        let next = (!stopped).then_some((events, translator));
                        return Some((chunks.into_iter().map(Ok).collect::<Vec<_>>(), next));
                    }
                    Err(err) => {
                        let err = match err {
                            ProviderError::Upstream { status, message, .. } => ProviderError::Upstream { provider: provider.clone(), status, message },
                            other => other,
                        };
                        return broken(&translator, err);
                    }
                }
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

/// How long a provider asked to wait (at most [`MAX_RETRY_AFTER_S`]): `retry-after-ms`
/// (`OpenAI` sends it beside `Retry-After`), else `Retry-After` as seconds or an HTTP-date (one in
/// the past means now).
fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let seconds = |text: &str| text.parse::<f64>().ok().map(|s| if s.is_nan() { 0.0 } else { s.clamp(0.0, 1e12) });
    #[allow(clippy::cast_precision_loss)]
    let cap = MAX_RETRY_AFTER_S as f64;
    if let Some(ms) = header("retry-after-ms").and_then(seconds) {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(cap)));
    }
    let value = header(RETRY_AFTER.as_str())?;
    if let Some(s) = seconds(value) {
        return Some(Duration::from_secs_f64(s.min(cap)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(Duration::from_secs(MAX_RETRY_AFTER_S)))
}

/// `wait` in whole seconds, rounded up (what a `Retry-After` header can say).
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
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
            if let Some(message) = error_answer(&value) {
                return Err(self.error_answered(message));
            }
            return serde_json::from_value(chat_of_completion(value, false)).map_err(|e| self.upstream(None, format!("unreadable text_completion: {e}")));
        }
        serde_json::from_slice(&body).map_err(|e| {
            // Not an answer: perhaps an error sent with 200, whose message says what went wrong.
            match serde_json::from_slice(&body).ok().as_ref().and_then(error_answer) {
                Some(message) => self.error_answered(message),
                None => self.upstream(None, format!("unreadable chat.completion: {e}")),
            }
        })
    }

    async fn stream(&self, mut req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        req.stream = Some(true);
        // Always ask for usage so the cost is exact (unless the server refuses it); the gateway
        // passes the usage chunk on only to clients that asked for it.
        if self.refuses_stream_options.load(Ordering::Relaxed) {
            req.stream_options = None;
        } else {
            let mut options = req.stream_options.take().unwrap_or(StreamOptions { include_usage: None, extra: serde_json::Map::new() });
            options.include_usage = Some(true);
            req.stream_options = Some(options);
        }
        let request_body = self.body(&req)?;
        let opened = self.with_retries(|| self.open_stream(&req.model, &request_body, Endpoint::of(&req))).await;
        let (first, rest) = match opened {
            Err(e) if req.stream_options.is_some() && names_stream_options(&e) => {
                if !self.refuses_stream_options.swap(true, Ordering::Relaxed) {
                    warn!(provider = %self.name, "the server refuses stream_options: its streams' usage is estimated from now on");
                }
                req.stream_options = None;
                let request_body = self.body(&req)?;
                self.with_retries(|| self.open_stream(&req.model, &request_body, Endpoint::of(&req))).await?
            }
            opened => opened?,
        };
        let provider = self.name.clone();
        let events = stream::iter(first.into_iter().map(Ok)).chain(with_idle_timeout(rest, Duration::from_millis(self.timeout_ms)));
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
        let events = stream::iter(first.into_iter().map(Ok)).chain(with_idle_timeout(rest, Duration::from_millis(self.timeout_ms))).boxed();
        // (events, a terminal event was seen); `None` once the stream has ended.
        let parsed = stream::unfold(Some((events, false)), move |state| {
            let provider = provider.clone();
            let secret = secret.clone();
            async move {
                let (mut events, mut ended) = state?;
                let upstream = |message: String| Self::scrubbed(secret.as_ref(), ProviderError::Upstream { provider: provider.clone(), status: None, message });
                loop {
                    let event = match events.next().await {
                        None if ended => return None,
                        // Cut before `response.completed` (or another end): it must not read as whole.
                        None => return Some((Err(upstream("the stream ended before the response did".into())), None)),
                        Some(Err(e)) => return Some((Err(Self::scrubbed(secret.as_ref(), broken_stream(&provider, &e))), None)),
                        Some(Ok(e)) if e.data.trim() == "[DONE]" => return None,
                        Some(Ok(e)) if e.data.trim().is_empty() => continue,
                        Some(Ok(e)) => e,
                    };
                    let data = match serde_json::from_str::<serde_json::Value>(&event.data) {
                        Ok(data) => data,
                        Err(err) => return Some((Err(upstream(format!("unreadable event: {err}"))), None)),
                    };
                    let kind = if event.event.is_empty() || event.event == "message" { data.get("type").and_then(serde_json::Value::as_str).unwrap_or("message").to_owned() } else { event.event };
                    // An event name is one line of printable ASCII; anything else is not passed on.
                    let kind = if kind.bytes().all(|b| b.is_ascii_graphic()) { kind } else { "message".to_owned() };
                    ended |= matches!(kind.as_str(), "response.completed" | "response.failed" | "response.incomplete" | "error");
                    // The provider's error events are passed on: without the key.
                    let data = match secret.as_deref() {
                        Some(secret) if kind == "error" || kind == "response.failed" => without_secret_in_json(data, secret),
                        _ => data,
                    };
                    return Some((Ok((kind, data)), Some((events, ended))));
                }
            }
        })
        .boxed();
        // Peek, as a chat stream does: a stream that fails or ends before it answers anything is
        // a failure with a status of its own (and the rule's fallbacks), not a 200 whose only
        // event is an error. (An opening `error` event was already one: `failed_at_once`.)
        crate::provider::peek_first(parsed, || self.upstream(None, "the stream ended before its first event".into())).await
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
                // A body written the .NET way opens with a byte-order mark, which JSON does not take.
                Ok(Ok(body)) => Ok(if body.starts_with(BOM) { body.slice(BOM.len()..) } else { body }),
            }
        })
        .await
    }

    /// One JSON request to `endpoint` (embeddings, responses), answered as the provider sent it.
    async fn json_call(&self, body: serde_json::Value, endpoint: Endpoint) -> Result<serde_json::Value, ProviderError> {
        let (model, request_body) = self.json_request(&body, endpoint)?;
        let answer = self.answer_body(&model, &request_body, endpoint).await?;
        let value = serde_json::from_slice(&answer).map_err(|e| self.upstream(None, format!("unreadable {} answer: {e}", endpoint.path())))?;
        if let Some(message) = error_answer(&value) {
            return Err(self.error_answered(message));
        }
        // An embeddings answer is its vectors: without them (`{"detail": "Not Found"}` from a
        // server with no such route) it is no answer, whatever the status said.
        if endpoint == Endpoint::Embeddings && !value.get("data").is_some_and(serde_json::Value::is_array) {
            let said = error_detail_of(&value).map_or_else(|| "an embeddings answer without data".to_owned(), |detail| detail.message);
            return Err(self.error_answered(said));
        }
        Ok(without_echoed_secret(value, &answer, self.secret.as_deref()))
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
/// the stream, a broken stream or an unreadable chunk becomes an `Upstream` error, as does an end
/// without `[DONE]` before every choice has its `finish_reason`: the answer was cut, and must not
/// read as whole.
fn openai_chunks(events: Events, provider: String, completion: bool) -> ChunkStream {
    // (events, what the choices have done so far); `None` once the stream has ended.
    stream::unfold(Some((events, Choices::default())), move |state| {
        let provider = provider.clone();
        async move {
            let (mut events, mut choices) = state?;
            let upstream = |message: String| ProviderError::Upstream { provider: provider.clone(), status: None, message };
            loop {
                let event = match events.next().await {
                    None if choices.all_finished() => return None,
                    None => return Some((Err(upstream("the stream ended before the answer did (a choice without finish_reason, no [DONE])".into())), None)),
                    Some(Err(e)) => return Some((Err(broken_stream(&provider, &e)), None)),
                    Some(Ok(event)) => event,
                };
                let data = event.data.trim();
                if data == "[DONE]" {
                    return None;
                }
                if data.is_empty() {
                    continue;
                }
                let chunk = openai_chunk(data, completion).map_err(upstream);
                if let Ok(chunk) = &chunk {
                    choices.saw(chunk);
                }
                let next = chunk.is_ok().then_some((events, choices));
                return Some((chunk, next));
            }
        }
    })
    .boxed()
}

/// Which choices of a stream have started and which have finished.
#[derive(Default)]
struct Choices {
    /// Indices seen without a `finish_reason` yet.
    open: Vec<u32>,
    /// A choice has finished.
    any_finished: bool,
}

impl Choices {
    fn saw(&mut self, chunk: &ChatChunk) {
        for choice in &chunk.choices {
            if choice.finish_reason.is_some() {
                self.any_finished = true;
                self.open.retain(|&i| i != choice.index);
            } else if !self.open.contains(&choice.index) {
                self.open.push(choice.index);
            }
        }
    }

    fn all_finished(&self) -> bool {
        self.any_finished && self.open.is_empty()
    }
}

/// One event's chunk, or what is wrong with it (an error the upstream sent, an unreadable chunk).
fn openai_chunk(data: &str, completion: bool) -> Result<ChatChunk, String> {
    // The common case in one pass (no `Value` in between): this runs for every streamed token.
    let direct = if completion { None } else { serde_json::from_str::<ChatChunk>(data).ok() };
    if let Some(chunk) = direct {
        return Ok(chunk);
    }
    let value = serde_json::from_str::<serde_json::Value>(data).map_err(|e| format!("unreadable chunk: {e}"))?;
    if let Some(error) = error_detail_of(&value) {
        return Err(error.message);
    }
    let value = if completion { chat_of_completion(value, true) } else { value };
    serde_json::from_value::<ChatChunk>(value).map_err(|e| format!("unreadable chunk: {e}"))
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A body without its leading UTF-8 byte-order mark, which SSE allows (servers writing UTF-8
/// the .NET way send one) and the event parser cannot take: it cuts a character boundary inside
/// the mark and panics.
fn without_bom<E>(body: impl futures::Stream<Item = Result<bytes::Bytes, E>>) -> impl futures::Stream<Item = Result<bytes::Bytes, E>> {
    // The body's first bytes, held until there are enough to tell whether they are the mark.
    let mut opening: Option<Vec<u8>> = Some(Vec::new());
    body.filter_map(move |piece| {
        let out = match piece {
            Ok(piece) => match &mut opening {
                Some(first_bytes) => {
                    first_bytes.extend_from_slice(&piece);
                    if first_bytes.len() < BOM.len() && BOM.starts_with(first_bytes) {
                        None
                    } else {
                        let start = if first_bytes.starts_with(BOM) { BOM.len() } else { 0 };
                        let whole = bytes::Bytes::from(std::mem::take(first_bytes));
                        opening = None;
                        Some(Ok(whole.slice(start..)))
                    }
                }
                None => Some(Ok(piece)),
            },
            Err(err) => Some(Err(err)),
        };
        futures::future::ready(out)
    })
}

/// Runs the upstream stream decoder (SSE framing, then the dialect's chunk translation) over a
/// body that arrives in `pieces`, all at once. The same code path as a live stream, without a
/// socket: for fuzzing and tests.
pub fn decode_stream(pieces: Vec<Vec<u8>>, anthropic: bool) -> Vec<Result<ChatChunk, ProviderError>> {
    let bytes = stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))));
    let events: Events = without_bom(bytes).eventsource().map(|e| e.map_err(|e| e.to_string())).boxed();
    let chunks = if anthropic { anthropic_chunks(events, "fuzz".into()) } else { openai_chunks(events, "fuzz".into(), false) };
    // Every piece is ready at once and nothing here waits on a timer: one poll finishes it.
    futures::FutureExt::now_or_never(chunks.collect::<Vec<_>>()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds_and_is_bounded() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let of = |v: &str| retry_after(&HeaderMap::from_iter([(RETRY_AFTER, http::HeaderValue::from_str(v).unwrap())]), now).map(whole_seconds);
        assert_eq!(of("7"), Some(7));
        assert_eq!(of("0.2"), Some(1));
        assert_eq!(of("-3"), Some(0));
        assert_eq!(of("99999999999999999999"), Some(MAX_RETRY_AFTER_S));
        assert_eq!(of("inf"), Some(MAX_RETRY_AFTER_S));
        assert_eq!(of("Wed, 21 Oct 2015 07:28:03 GMT"), Some(3));
        assert_eq!(of("Wed, 21 Oct 2015 08:28:00 GMT"), Some(3600));
        assert_eq!(of("Wed, 21 Oct 2015 07:27:00 GMT"), Some(0), "a date gone by: now");
        assert_eq!(of("Fri, 21 Oct 2016 07:28:00 GMT"), Some(MAX_RETRY_AFTER_S));
        assert_eq!(of("soon"), None);
        let both = HeaderMap::from_iter([
            (RETRY_AFTER, http::HeaderValue::from_static("2")),
            (HeaderName::from_static("retry-after-ms"), http::HeaderValue::from_static("1500")),
        ]);
        assert_eq!(retry_after(&both, now), Some(Duration::from_millis(1500)), "the finer one wins");
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
        // A leading byte-order mark (SSE allows one) is dropped, however the body is split.
        let marked = [b"\xEF\xBB\xBF".as_slice(), body].concat();
        for split in 0..8 {
            let pieces = vec![marked[..split].to_vec(), marked[split..].to_vec()];
            assert_eq!(format!("{:?}", decode_stream(pieces, false)), format!("{whole:?}"), "mark split at {split}");
        }
    }

    #[test]
    fn azure_versions_before_2024_09_01_get_no_stream_options_nor_max_completion_tokens() {
        for (version, takes) in [("2024-10-21", true), ("2024-09-01-preview", true), ("2025-04-01-preview", true), ("2024-06-01", false), ("2024-02-15-preview", false), ("latest", true)] {
            assert_eq!(azure_from_2024_09(version), takes, "{version}");
        }
    }

    #[test]
    fn a_stream_that_ends_before_its_answer_does_is_an_error() {
        let chunk = |finish: &str| format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}},\"finish_reason\":{finish}}}]}}\n\n");
        let cut = decode_stream(vec![chunk("null").into_bytes()], false);
        assert!(matches!(cut.as_slice(), [Ok(_), Err(ProviderError::Upstream { message, .. })] if message.contains("ended before")), "{cut:?}");
        // A finished answer without `[DONE]` is whole.
        let finished = decode_stream(vec![format!("{}{}", chunk("null"), chunk("\"stop\"")).into_bytes()], false);
        assert!(finished.len() == 2 && finished.iter().all(Result::is_ok), "{finished:?}");
        // With n = 2, every choice must finish: choice 1 did, choice 0 did not.
        let second = |finish: &str| chunk(finish).replace("\"index\":0", "\"index\":1");
        let half = decode_stream(vec![format!("{}{}{}", chunk("null"), second("null"), second("\"stop\"")).into_bytes()], false);
        assert!(matches!(half.last(), Some(Err(ProviderError::Upstream { .. }))), "{half:?}");
        let both = decode_stream(vec![format!("{}{}{}{}", chunk("null"), second("\"stop\""), chunk("null"), chunk("\"stop\"")).into_bytes()], false);
        assert!(both.iter().all(Result::is_ok), "{both:?}");
        // llama-server's error (a numeric code) is read as an error, with its message.
        let error = decode_stream(vec![b"data: {\"error\":{\"code\":500,\"message\":\"out of memory\",\"type\":\"server_error\"}}\n\n".to_vec()], false);
        assert!(matches!(error.as_slice(), [Err(ProviderError::Upstream { message, .. })] if message == "out of memory"), "{error:?}");
        // Anthropic: text, then the end before `message_stop`.
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        let cut = decode_stream(vec![anthropic.to_vec()], true);
        assert!(matches!(cut.as_slice(), [Ok(_), Ok(_), Err(ProviderError::Upstream { message, .. })] if message.contains("message_stop")), "{cut:?}");
        let counted = String::from_utf8(anthropic.to_vec()).unwrap().replace("\"model\":\"c\"}", "\"model\":\"c\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}");
        let cut = decode_stream(vec![counted.into_bytes()], true);
        // With the prompt's usage in `message_start`, a usage chunk follows it, and another comes
        // before the error.
        let prompt_of = |chunk: &ChatChunk| chunk.is_usage_only().then(|| chunk.usage.as_ref().map(|u| u.prompt_tokens)).flatten();
        assert!(matches!(cut.as_slice(), [Ok(_), Ok(start), Ok(_), Ok(usage), Err(_)] if prompt_of(start) == Some(20) && prompt_of(usage) == Some(20)), "{cut:?}");
        let whole = [anthropic.as_slice(), b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"].concat();
        assert!(decode_stream(vec![whole], true).iter().all(Result::is_ok));
    }

    #[test]
    fn a_passed_through_answer_loses_an_echoed_key() {
        let raw = br#"{"id":"resp_f","status":"failed","error":{"code":"server_error","message":"failed sk-secretKEY123"}}"#;
        let value: serde_json::Value = serde_json::from_slice(raw).unwrap();
        let key = |k: &str| crate::secret::Secret::new(k).unwrap();
        let clean = without_echoed_secret(value.clone(), raw, Some(&key("sk-secretKEY123")));
        assert_eq!(clean["error"]["message"], "failed [redacted]");
        assert_eq!(without_echoed_secret(value.clone(), raw, Some(&key("another-key-99"))), value);
    }

    #[test]
    fn error_bodies_of_every_shape_give_their_message() {
        let message = |body: &[u8]| error_body_of(body).map(|b| b.error.message);
        assert_eq!(message(br#"{"error":{"message":"m1","type":"t","param":null,"code":"c"}}"#).as_deref(), Some("m1"));
        assert_eq!(message(br#"{"error":{"code":400,"message":"m2","type":"exceed_context_size_error"}}"#).as_deref(), Some("m2"));
        assert_eq!(message(br#"{"object":"error","message":"m3","type":"BadRequestError","param":null,"code":400}"#).as_deref(), Some("m3"));
        assert_eq!(message(br#"{"error":"m4"}"#).as_deref(), Some("m4"));
        assert_eq!(message(br#"{"detail":"m5"}"#).as_deref(), Some("m5"));
        let gemini = br#"[{"error":{"code":400,"message":"m7","status":"INVALID_ARGUMENT"}}]"#;
        assert_eq!(message(gemini).as_deref(), Some("m7"));
        assert_eq!(error_body_of(gemini).unwrap().error.kind, "invalid_request_error");
        assert_eq!(message(b"[1, 2]"), None);
        assert_eq!(message(b"  m6 \n").as_deref(), Some("m6"));
        assert_eq!(message(b"<html>502</html>"), None);
        assert_eq!(message(b""), None);
        let llama = error_body_of(br#"{"error":{"code":400,"message":"m","type":"exceed_context_size_error"}}"#).unwrap().error;
        assert_eq!((llama.kind.as_str(), llama.code.as_deref()), ("exceed_context_size_error", Some("400")));
    }
}
