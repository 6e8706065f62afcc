//! `GET /healthz` and `GET /readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// The process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once the model is loaded and the router is ready; 503 before and while draining.
/// The body carries the engine's live counters (queue, active sequences, KV cells).
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let engine = state.local.as_ref().map(|l| l.engine().stats());
    let draining = state.draining.load(Relaxed);
    let ready = state.is_ready();
    let status = if ready { "ready" } else if draining { "draining" } else { "loading" };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"status": status, "engine": engine})))
}
