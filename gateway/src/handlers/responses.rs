//! `POST /v1/responses`, `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`: the Responses
//! API, answered through the chat pipeline (same routing, limits, accounting) and translated by
//! `responses.rs`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{self, Stream, StreamExt};
use providers::wire::ChatMessage;
use providers::ChunkStream;
use router::TenantProfile;
use serde_json::{json, Value};

use crate::chat_request::validate_chat_request;
use crate::error::ApiError;
use crate::handlers::chat::{serve_chat, Exchange, ServedBody};
use crate::handlers::read_body;
use crate::middleware::request_ctx::RequestCtx;
use crate::responses::{self, Envelope, EventWriter, StoredResponse};
use crate::state::AppState;

/// Creates a response, streamed as semantic events or answered whole; stored unless
/// `store: false`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut exchange = Exchange::new(&state, &ctx, &tenant);
    let result = async {
        let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
        let req = responses::parse_request(&bytes)?;
        let history = match &req.previous_response_id {
            Some(id) => state.responses.get(&tenant.name, id).await.ok_or_else(|| ApiError::ResponseNotFound { id: id.clone() })?.conversation.clone(),
            None => Vec::new(),
        };
        let input = responses::input_messages(&req)?;
        let chat = responses::to_chat(&req, &history, &input)?;
        validate_chat_request(&chat)?;
        let created_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut envelope = Envelope::new(&req, format!("resp_{}", uuid::Uuid::new_v4().simple()), created_at);
        let keep = req.wants_store().then(|| Keep { state: Arc::clone(&state), tenant: tenant.name.clone(), history, input });
        let served = serve_chat(&state, &ctx, &tenant, &headers, chat, &mut exchange).await?;
        let mut http = match served.body {
            ServedBody::Complete(answer) => {
                let response = responses::from_chat(&mut envelope, &answer);
                if let Some(keep) = keep {
                    keep.store(&envelope.id, &response).await;
                }
                Json(response).into_response()
            }
            ServedBody::Stream { chunks, .. } => Sse::new(events(EventWriter::new(envelope.clone()), envelope.id, chunks, keep)).into_response(),
        };
        http.headers_mut().extend(served.headers);
        Ok(http)
    }
    .await;
    exchange.finish(result)
}

/// The stored response `id`, if this tenant stored it.
pub async fn get(State(state): State<Arc<AppState>>, Extension(tenant): Extension<Arc<TenantProfile>>, Path(id): Path<String>) -> Response {
    match state.responses.get(&tenant.name, &id).await {
        Some(stored) => Json(stored.response.clone()).into_response(),
        None => ApiError::ResponseNotFound { id }.into_response(),
    }
}

/// Forgets the stored response `id`.
pub async fn delete(State(state): State<Arc<AppState>>, Extension(tenant): Extension<Arc<TenantProfile>>, Path(id): Path<String>) -> Response {
    if state.responses.delete(&tenant.name, &id).await {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        ApiError::ResponseNotFound { id }.into_response()
    }
}

/// Where a finished response is stored, with the turn it continues.
struct Keep {
    state: Arc<AppState>,
    tenant: String,
    history: Vec<ChatMessage>,
    input: Vec<ChatMessage>,
}

impl Keep {
    async fn store(self, id: &str, response: &Value) {
        let conversation = responses::conversation_after(&self.history, &self.input, response);
        let stored = StoredResponse { tenant: self.tenant, conversation, response: response.clone() };
        self.state.responses.put(id, stored).await;
    }
}

/// The chat chunks as Responses events. The response is stored before `response.completed` is
/// sent, so a client that continues it at once (on any replica sharing Redis) finds it. A stream
/// that fails after it started ends with an `error` event and is not stored.
fn events(writer: EventWriter, id: String, chunks: ChunkStream, keep: Option<Keep>) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Pump {
        writer: EventWriter,
        id: String,
        chunks: ChunkStream,
        keep: Option<Keep>,
        started: bool,
        done: bool,
    }
    let pump = Pump { writer, id, chunks, keep, started: false, done: false };
    stream::unfold(pump, |mut p| async move {
        if p.done {
            return None;
        }
        if !p.started {
            p.started = true;
            return Some((p.writer.start(), p));
        }
        loop {
            match p.chunks.next().await {
                Some(Ok(chunk)) => {
                    let events = p.writer.chunk(&chunk);
                    if !events.is_empty() {
                        return Some((events, p));
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "response stream failed after it started");
                    let body = ApiError::from(err).body();
                    let event = p.writer.error(body.error.code.as_deref().unwrap_or("upstream_error"), &body.error.message);
                    p.done = true;
                    return Some((vec![event], p));
                }
                None => {
                    let (events, response) = p.writer.finish();
                    if let Some(keep) = p.keep.take() {
                        keep.store(&p.id, &response).await;
                    }
                    p.done = true;
                    return Some((events, p));
                }
            }
        }
    })
    .flat_map(stream::iter)
    .map(|(kind, body)| Ok(Event::default().event(kind).data(body.to_string())))
}
