//! A stand-in for proprietary OpenAI-style APIs, speaking their exact wire format. What it does
//! depends on the request's `model`:
//! - `echo`: answers `echo: <last message>` (streamed word by word when asked), with usage.
//! - `shred`: like `echo`, but streamed three characters a chunk (placeholders arrive split).
//! - `cached`: like `echo`, reporting 8 of its 11 prompt tokens as served from the prompt cache.
//! - `gated`: streams one chunk, then holds the rest until `POST /control/release`.
//! - `fail`: 500 with an `OpenAI` error body. `ratelimit`: 429 with `retry-after: 7`.
//! - `reject`: 400 with an `OpenAI` error body. `drop`: one chunk, then (after
//!   `POST /control/release`) the connection breaks.
//!
//! `POST /control/faults` queues faults (`[{"status": 500}, {"status": 429, "retry_after": "0"},
//! {"drop": true}]`): each following chat request takes the next one instead of its answer
//! (`drop`: headers sent, then the connection breaks before the first event).
//!
//! Azure's shape is served too: `POST /openai/deployments/{deployment}/chat/completions
//! ?api-version=…` needs the `api-key` header, refuses `Authorization`, and answers as the
//! model named by the deployment.
//!
//! `GET /control/requests` returns every request received (path, body, `authorization` and
//! `api-key` header values).
//! Prints `listening on ADDR` once bound to a free port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<Value>>,
    faults: Mutex<std::collections::VecDeque<Value>>,
    release: Notify,
}

fn chunk(model: &str, delta: &Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn azure_chat(
    State(fake): State<Arc<Fake>>,
    Path(deployment): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Response {
    if headers.contains_key("authorization") || !headers.contains_key("api-key") {
        return error(StatusCode::UNAUTHORIZED, "Access denied due to missing or invalid api-key header.", "invalid_request_error", "401");
    }
    if !query.contains_key("api-version") {
        return error(StatusCode::NOT_FOUND, "Resource not found (api-version missing)", "invalid_request_error", "404");
    }
    body["model"] = Value::String(deployment.clone());
    answer(&fake, &format!("/openai/deployments/{deployment}/chat/completions"), &headers, &body)
}

async fn chat(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    answer(&fake, "/v1/chat/completions", &headers, &body)
}

fn answer(fake: &Arc<Fake>, path: &str, headers: &HeaderMap, body: &Value) -> Response {
    let fake = Arc::clone(fake);
    fake.requests.lock().expect("lock").push(json!({
        "path": path, "body": body, "authorization": header(headers, "authorization"), "api_key": header(headers, "api-key"),
    }));
    let fault = fake.faults.lock().expect("lock").pop_front();
    if let Some(fault) = fault {
        if fault["drop"].as_bool() == Some(true) {
            let broken = futures::stream::iter([Err::<Bytes, _>(std::io::Error::other("dropped by the fake before the first event"))]);
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(broken))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        let status = fault["status"].as_u64().and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok());
        let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error(status, "scripted fault", "server_error", "fault");
        if let Some(after) = fault["retry_after"].as_str() {
            r.headers_mut().insert("retry-after", after.parse().expect("header"));
        }
        return r;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let last = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or_default();
    let answer = format!("echo: {last}");
    match model.as_str() {
        "fail" => return error(StatusCode::INTERNAL_SERVER_ERROR, "the fake upstream failed", "server_error", "internal"),
        "ratelimit" => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "slow down", "rate_limit_error", "rate_limit_exceeded");
            r.headers_mut().insert("retry-after", "7".parse().expect("header"));
            return r;
        }
        "reject" => return error(StatusCode::BAD_REQUEST, "the fake upstream rejects this", "invalid_request_error", "bad_thing"),
        _ => {}
    }
    if !stream {
        let words = u64::try_from(answer.split_whitespace().count()).unwrap_or(0);
        let mut usage = json!({"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words});
        if model == "cached" {
            usage["prompt_tokens_details"] = json!({"cached_tokens": 8});
        }
        return Json(json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": null}, "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
            "system_fingerprint": "fp_fake"}))
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let first = chunk(&model, &json!({"role": "assistant", "content": ""}), None);
        let _ = tx.send(Ok(sse(&first))).await;
        match model.as_str() {
            "gated" => {
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": "first"}), None)))).await;
                // Bounded so a broken test cannot hang the fake forever.
                let _ = tokio::time::timeout(Duration::from_secs(30), fake.release.notified()).await;
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": " second"}), None)))).await;
            }
            "drop" => {
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": "partial"}), None)))).await;
                // Held like `gated`, so the client provably has "partial" before the break.
                let _ = tokio::time::timeout(Duration::from_secs(30), fake.release.notified()).await;
                let _ = tx.send(Err(std::io::Error::other("connection dropped by the fake"))).await;
                return;
            }
            "shred" => {
                let chars: Vec<char> = answer.chars().collect();
                for piece in chars.chunks(3) {
                    let piece: String = piece.iter().collect();
                    let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": piece}), None)))).await;
                }
            }
            _ => {
                for (i, word) in answer.split(' ').enumerate() {
                    let piece = if i == 0 { word.to_owned() } else { format!(" {word}") };
                    let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": piece}), None)))).await;
                }
            }
        }
        let _ = tx.send(Ok(sse(&chunk(&model, &json!({}), Some("stop"))))).await;
        if include_usage {
            let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                               "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}});
            let _ = tx.send(Ok(sse(&usage))).await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn faults(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> StatusCode {
    let mut queue = fake.faults.lock().expect("lock");
    queue.extend(body["faults"].as_array().cloned().unwrap_or_default());
    StatusCode::NO_CONTENT
}

async fn release(State(fake): State<Arc<Fake>>) -> StatusCode {
    fake.release.notify_waiters();
    StatusCode::NO_CONTENT
}

async fn requests(State(fake): State<Arc<Fake>>) -> Json<Value> {
    Json(Value::Array(fake.requests.lock().expect("lock").clone()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/openai/deployments/{deployment}/chat/completions", post(azure_chat))
        .route("/control/faults", post(faults))
        .route("/control/release", post(release))
        .route("/control/requests", get(requests))
        .with_state(Arc::new(Fake::default()));
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
