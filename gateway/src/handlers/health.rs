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

/// 200 once the model is loaded and the router is ready; 503 before (`loading`), when the model
/// could not be loaded (`failed`, with the `error`) and while draining.
/// The body carries the engine's live counters (queue, active sequences, KV cells).
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let engine = state.local.as_ref().map(|l| l.engine().stats());
    let failure = state.local.as_ref().and_then(|l| match l.engine().startup() {
        local_engine::Startup::Failed(reason) => Some(reason),
        _ => None,
    });
    let draining = state.draining.load(Relaxed);
    let ready = state.is_ready();
    // A failed start drains too (serve then exits 1): the failure is what probes must see.
    let status = if ready { "ready" } else if failure.is_some() { "failed" } else if draining { "draining" } else { "loading" };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"status": status, "engine": engine});
    if let Some(reason) = failure {
        body["error"] = Value::String(reason);
    }
    (code, Json(body))
}

/// Prometheus text exposition (INTERFACE.md §5); gauges are read from the engine and the
/// providers' circuits at scrape time.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl axum::response::IntoResponse {
    let metrics = &state.metrics;
    if let Some(local) = &state.local {
        let engine = local.engine().stats();
        metrics.queue_depth.set(i64::try_from(engine.queued).unwrap_or(i64::MAX));
        metrics.active_sequences.set(i64::try_from(engine.active).unwrap_or(i64::MAX));
        metrics.kv_cells_used.set(i64::try_from(engine.kv_cells_used).unwrap_or(i64::MAX));
        // Only tenants holding something now: one that went idle leaves the exposition.
        metrics.tenant_queue_depth.reset();
        metrics.tenant_active_sequences.reset();
        for share in local.engine().tenants() {
            let tenant = share.tenant.as_deref().unwrap_or("none");
            metrics.tenant_queue_depth.with_label_values(&[tenant]).set(i64::try_from(share.waiting).unwrap_or(i64::MAX));
            metrics.tenant_active_sequences.with_label_values(&[tenant]).set(i64::try_from(share.running).unwrap_or(i64::MAX));
        }
    }
    for (name, remote) in &state.remotes {
        metrics.circuit_open.with_label_values(&[name.as_str()]).set(i64::from(remote.provider.is_open()));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
}
