//! A stand-in for proprietary OpenAI-style APIs, speaking their exact wire format. What it does
//! depends on the request's `model`:
//! - `echo`: answers `echo: <last message>` (streamed word by word when asked), with usage.
//! - `shred`: like `echo`, but streamed three characters a chunk (placeholders arrive split).
//! - `gated`: streams one chunk, then holds the rest until `POST /control/release`.
//! - `fail`: 500 with an `OpenAI` error body. `ratelimit`: 429 with `retry-after: 7`.
//! - `reject`: 400 with an `OpenAI` error body. `drop`: one chunk, then (after
//!   `POST /control/release`) the connection breaks.
//!
//! `GET /control/requests` returns every request received (body and whether it carried auth).
//! Prints `listening on ADDR` once bound to a free port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<Value>>,
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

async fn chat(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    fake.requests.lock().expect("lock").push(json!({"body": body, "authorization": authorized}));
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
        return Json(json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": null}, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words},
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
        .route("/control/release", post(release))
        .route("/control/requests", get(requests))
        .with_state(Arc::new(Fake::default()));
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
