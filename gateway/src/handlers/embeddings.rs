//! `POST /v1/embeddings`: local embeddings (`[local_embeddings]`, a model run in-process) or a
//! provider's, passed through. Privacy-tagged input (PII found, the caller's or the tenant's
//! tags) is embedded locally or refused — never sent out: embedding vectors of different models
//! do not mix, so a request naming a remote model is refused (403) rather than silently served
//! by another model.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use providers::wire::Usage;
use providers::ProviderError;
use router::TenantProfile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::accounting::estimate_tokens;
use crate::budgets::usd_to_nanos;
use crate::catalog::ModelChoice;
use crate::chat_request::parse_body;
use crate::dispatch::{caller_tags, count_upstream_error, provider_for};
use crate::error::ApiError;
use crate::handlers::chat::Exchange;
use crate::handlers::read_body;
use crate::middleware::request_ctx::RequestCtx;
use crate::privacy;
use crate::state::AppState;

/// `[local_embeddings]`: an embedding model run in-process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalEmbeddingsConfig {
    /// GGUF embedding model (BERT architecture, e.g. all-MiniLM-L6-v2).
    pub model: PathBuf,
    /// The model name clients send (also served for `model: "auto"`); its target is `local/<name>`.
    #[serde(default = "default_name")]
    pub name: String,
    /// CPU threads; 0 uses every core.
    #[serde(default)]
    pub threads: u32,
    /// Tokens per llama.cpp batch.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: u32,
    /// Most inputs in one request.
    #[serde(default = "default_max_inputs")]
    pub max_inputs: usize,
    /// Price per million input tokens, for accounting.
    #[serde(default)]
    pub cost_per_mtok: f64,
}

fn default_name() -> String {
    "local-embed".into()
}

const fn default_max_batch_tokens() -> u32 {
    512
}

const fn default_max_inputs() -> usize {
    2048
}

impl LocalEmbeddingsConfig {
    /// What is wrong with the section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains('/') {
            problems.push(format!("local_embeddings.name {:?} must be non-empty and contain no '/'", self.name));
        }
        if self.max_batch_tokens == 0 {
            problems.push("local_embeddings.max_batch_tokens must be at least 1".into());
        }
        if self.max_inputs == 0 {
            problems.push("local_embeddings.max_inputs must be at least 1".into());
        }
        if self.cost_per_mtok.is_nan() || self.cost_per_mtok < 0.0 {
            problems.push("local_embeddings.cost_per_mtok must be >= 0".into());
        }
        if !self.model.is_file() {
            problems.push(format!("local_embeddings.model {} does not exist (run `make model` to make the default one)", self.model.display()));
        } else if let Some(reason) = local_engine::not_an_embedding_model(&self.model).or_else(|| local_engine::gguf_truncation(&self.model)) {
            problems.push(format!("local_embeddings.model: {reason}"));
        }
        problems
    }

    /// The engine's settings.
    pub fn engine_config(&self) -> local_engine::EmbeddingConfig {
        local_engine::EmbeddingConfig { model_path: self.model.clone(), threads: self.threads, max_batch_tokens: self.max_batch_tokens }
    }

    /// `local/<name>`.
    pub fn target(&self) -> String {
        format!("local/{}", self.name)
    }
}

/// The local embedding model and its configuration.
pub struct LocalEmbeddings {
    /// Settings.
    pub config: LocalEmbeddingsConfig,
    /// The model, on its own thread.
    pub embedder: Arc<local_engine::Embedder>,
}

/// Sets its flag when dropped.
struct AbandonOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The texts of `input` (a string or a list of strings); `None` for token-id input.
fn texts(input: &Value, max_inputs: usize) -> Result<Option<Vec<String>>, ApiError> {
    let list = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect()
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|v| v.is_number() || v.is_array()) => {
            let lists = items.iter().filter(|v| v.is_array()).count();
            if lists > max_inputs {
                return Err(ApiError::invalid(format!("'input' has {lists} items; at most {max_inputs} are allowed."), "input"));
            }
            return Ok(None);
        }
        _ => return Err(ApiError::invalid("'input' must be a string or a non-empty array of strings.", "input")),
    };
    if list.len() > max_inputs {
        return Err(ApiError::invalid(format!("'input' has {} items; at most {max_inputs} are allowed.", list.len()), "input"));
    }
    if let Some(i) = list.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!("'input[{i}]' must not be empty."), "input"));
    }
    Ok(Some(list))
}

/// The input's length in characters, for the estimates: its texts', or for token ids (`[1, 2]`,
/// `[[1, 2], [3]]`: tokens already) four characters each, the length a token is estimated at,
/// so that rate limits and the budget's reservation count them.
fn input_chars(texts: Option<&[String]>, input: &Value) -> usize {
    if let Some(texts) = texts {
        return texts.iter().map(|t| t.chars().count()).sum();
    }
    let items = input.as_array().map_or(&[][..], Vec::as_slice);
    items.iter().map(|item| item.as_array().map_or(1, Vec::len)).sum::<usize>().saturating_mul(4)
}

/// The same guard as chat's for a provider's embedding model: never to a region outside the
/// tenant's residency or a model outside its `models`, and privacy-tagged input only to a trusted
/// provider (an embedding cannot be redacted: the vector is the text's).
fn provider_guard(state: &AppState, tenant: &TenantProfile, target: &str, tags: &[String], inspection: &crate::privacy::Inspection) -> Result<(), ApiError> {
    let live = state.live.load();
    let topology = live.router.topology();
    if let Some(reason) = router::violation(topology, target, &tenant.residency, false, router::Redacts::No) {
        return Err(ApiError::PolicyViolation { reason });
    }
    among_models(tenant, target)?;
    if let Some(why) = (!tags.is_empty()).then(|| router::violation(topology, target, &tenant.residency, true, router::Redacts::No)).flatten() {
        let unscannable = tags == ["pii"] && !inspection.pii.is_empty() && inspection.pii.keys().all(|k| k == router::PiiKind::Unscannable.as_str());
        let reason = if unscannable {
            format!("token-id input cannot be scanned for PII, so it is embedded locally or by a trusted provider only ({why}); send the text instead")
        } else {
            format!("privacy-tagged input ({}) is embedded locally or by a trusted provider only: {why}", tags.join(", "))
        };
        return Err(ApiError::PolicyViolation { reason });
    }
    Ok(())
}

/// The tenant's `models` bound embedding models as they bound chat's: one outside them is 403.
fn among_models(tenant: &TenantProfile, target: &str) -> Result<(), ApiError> {
    router::model_violation(&tenant.models, &tenant.name, target).map_or(Ok(()), |reason| Err(ApiError::PolicyViolation { reason }))
}

/// Residency binds the local model too: it runs where the gateway runs.
fn inside_residency(state: &AppState, tenant: &TenantProfile, target: &str) -> Result<(), ApiError> {
    among_models(tenant, target)?;
    let region = state.config.server.region.as_str();
    if router::region_allowed(&tenant.residency, Some(region)) {
        return Ok(());
    }
    Err(ApiError::PolicyViolation { reason: format!("target {target:?} runs in region {region} outside the tenant's residency [{}]", tenant.residency.join(", ")) })
}

/// What the API checks of a request's own fields; the encoding format asked for.
fn checked_fields(req: &EmbeddingsRequest) -> Result<&str, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("'model' must be a non-empty string.", "model"));
    }
    if req.extra.get("user").is_some_and(|u| !u.is_string() && !u.is_null()) {
        return Err(ApiError::invalid("Invalid type for 'user': expected a string.", "user"));
    }
    let format = req.encoding_format.as_deref().unwrap_or("float");
    if format != "float" && format != "base64" {
        return Err(ApiError::invalid(format!("Invalid value for 'encoding_format': {format:?}. Supported values are: float, base64."), "encoding_format"));
    }
    Ok(format)
}

/// Answers an embeddings request.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut exchange = Exchange::new(&state, &ctx, &tenant);
    let result = answer(&state, &ctx, &tenant, &headers, body, &mut exchange).await;
    exchange.finish(&state, &tenant, result).await
}

async fn answer(state: &AppState, ctx: &RequestCtx, tenant: &TenantProfile, headers: &HeaderMap, body: Body, exchange: &mut Exchange) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
    let req: EmbeddingsRequest = parse_body(&bytes)?;
    let format = checked_fields(&req)?;
    let local = state.embeddings.as_ref();
    let max_inputs = local.map_or(default_max_inputs(), |l| l.config.max_inputs);
    let texts = texts(&req.input, max_inputs)?;
    // Token ids cannot be scanned: they count as unscannable (fail closed), as images do in chat.
    let mut inspection = privacy::inspect_texts(texts.as_deref());
    // The other fields go to a provider as sent (`user`…): PII in them counts too.
    privacy::count_pii_in(&req.extra, &mut inspection.pii);
    let mut tags: Vec<String> = caller_tags(headers);
    tags.extend(tenant.tags.iter().cloned());
    tags.extend(inspection.pii.keys().map(|_| "pii".to_owned()));
    tags.sort();
    tags.dedup();
    let chars = input_chars(texts.as_deref(), &req.input);
    let prompt_tokens = estimate_tokens(chars);
    if let Some(record) = exchange.record() {
        record.routed("embeddings", inspection.pii.keys().cloned().collect(), chars);
        // The baseline is a chat model: an embedding is no saving against it.
        record.without_baseline();
    }
    let is_local = local.is_some_and(|l| req.model == "auto" || req.model == l.config.name || req.model == l.config.target());
    if is_local {
        let local = local.ok_or_else(|| ApiError::ModelNotFound { model: req.model.clone() })?;
        let texts = texts.ok_or_else(|| ApiError::invalid("The local embedding model takes text input, not token ids.", "input"))?;
        if let Some(d) = req.dimensions.filter(|&d| usize::try_from(d).ok() != Some(local.embedder.dimensions())) {
            return Err(ApiError::invalid(format!("The model {} has {} dimensions; 'dimensions' {d} is not supported.", local.config.name, local.embedder.dimensions()), "dimensions"));
        }
        let target = local.config.target();
        inside_residency(state, tenant, &target)?;
        exchange.admit(state, ctx, tenant, prompt_tokens, 0, false, false).await?;
        if let Some(record) = exchange.record() {
            record.attempting(&target, false);
        }
        let embedder = Arc::clone(&local.embedder);
        // Set when this handler is dropped (the client went away): the embedding thread then
        // stops before its next batch instead of finishing work nobody waits for.
        let abandoned = AbandonOnDrop(Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let flag = Arc::clone(&abandoned.0);
        let (vectors, tokens) = tokio::task::spawn_blocking(move || embedder.embed_unless_abandoned(&texts, flag))
            .await
            .map_err(|e| ApiError::Provider(ProviderError::Unavailable { message: format!("the embedding thread failed: {e}") }))?
            .map_err(|e| ApiError::Provider(local_error(&e)))?;
        let usage = Usage::new(tokens, 0);
        let cost = finish_record(exchange, &target, Some(&usage));
        let data: Vec<Value> = vectors.iter().enumerate().map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": encode(v, format)})).collect();
        let body = json!({"object": "list", "data": data, "model": local.config.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
        return Ok(with_headers(Json(body).into_response(), &target, cost, "local"));
    }
    let target = match state.catalog.resolve(&req.model) {
        Some(ModelChoice::Target(target)) if !target.starts_with("local/") => target,
        Some(ModelChoice::Auto) => {
            return Err(ApiError::invalid("model \"auto\" needs a [local_embeddings] model; name a provider's embedding model instead.", "model"))
        }
        Some(ModelChoice::Target(target)) => {
            return Err(ApiError::invalid(
                format!("The model {:?} is the local chat model ({target}), not an embedding model; name the [local_embeddings] model or a provider's embedding model.", req.model),
                "model",
            ))
        }
        None => return Err(ApiError::ModelNotFound { model: req.model.clone() }),
    };
    provider_guard(state, tenant, &target, &tags, &inspection)?;
    let (provider, upstream_model) = provider_for(state, &target)?;
    let mut body = Map::new();
    body.insert("model".into(), Value::String(upstream_model));
    body.insert("input".into(), req.input.clone());
    if let Some(format) = &req.encoding_format {
        body.insert("encoding_format".into(), Value::String(format.clone()));
    }
    if let Some(d) = req.dimensions {
        body.insert("dimensions".into(), d.into());
    }
    body.extend(req.extra);
    let reserve = usd_to_nanos((state.pricer)(&target, &Usage::new(prompt_tokens, 0)));
    exchange.admit(state, ctx, tenant, prompt_tokens, reserve, true, false).await?;
    if let Some(record) = exchange.record() {
        record.attempting(&target, false);
    }
    let mut answer = provider.embeddings(Value::Object(body)).await.inspect_err(|err| count_upstream_error(state, &target, err))?;
    // Without the provider's count, the record estimates it (and says so).
    let usage = answer.pointer("/usage/prompt_tokens").and_then(Value::as_u64).map(|tokens| Usage::new(tokens, 0));
    let Some(fields) = answer.as_object_mut() else {
        state.ledger.upstream_failed(&target, "upstream");
        return Err(ProviderError::Upstream { provider: target, status: None, message: "the embeddings answer is not a JSON object".into() }.into());
    };
    // The client named the model; it gets its name back, as for chat.
    fields.insert("model".into(), Value::String(req.model));
    let cost = finish_record(exchange, &target, usage.as_ref());
    // The answer shows what it is billed for, the estimate included, as a chat answer does.
    if let Some(billed) = exchange.record().filter(|_| usage.is_none()).and_then(|r| r.billed_usage()) {
        fields.insert("usage".into(), json!({"prompt_tokens": billed.prompt_tokens, "total_tokens": billed.prompt_tokens}));
    }
    Ok(with_headers(Json(answer).into_response(), &target, cost, "remote"))
}

fn local_error(err: &local_engine::EngineError) -> ProviderError {
    match err {
        local_engine::EngineError::InputTooLong { .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some("input".into()) },
        other => ProviderError::Unavailable { message: other.to_string() },
    }
}

/// Writes target, usage and status into the record; returns the cost.
fn finish_record(exchange: &mut Exchange, target: &str, usage: Option<&Usage>) -> f64 {
    let Some(record) = exchange.record() else { return 0.0 };
    record.served_by(target, false);
    record.usage(usage);
    record.status(200);
    record.cost_usd()
}

/// A vector as floats or as base64 of its little-endian `f32` bytes.
fn encode(vector: &[f32], format: &str) -> Value {
    if format == "base64" {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    }
}

fn with_headers(mut response: Response, target: &str, cost: f64, tier: &str) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [("x-switchyard-target", target.to_owned()), ("x-switchyard-tier", tier.to_owned()), ("x-switchyard-cost-usd", cost.to_string()), ("x-switchyard-rule", "embeddings".to_owned())] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let Value::String(b64) = encode(&[1.0, -2.5], "base64") else { panic!("not a string") };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(bytes, [1.0_f32.to_le_bytes(), (-2.5_f32).to_le_bytes()].concat());
    }

    #[test]
    fn input_shapes() {
        assert_eq!(texts(&json!("a"), 10).unwrap(), Some(vec!["a".to_owned()]));
        assert_eq!(texts(&json!([1, 2]), 10).unwrap(), None);
        assert!(texts(&json!([]), 10).is_err());
        assert!(texts(&json!(["a", ""]), 10).is_err());
        assert!(texts(&json!(["a", "b", "c"]), 2).is_err());
        assert!(texts(&json!({"a": 1}), 10).is_err());
    }
}
