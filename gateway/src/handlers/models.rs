//! `GET /v1/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// The local model, every `provider/model`, the local embedding model, and `auto`.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let created = state.started_unix;
    let mut data: Vec<Value> = state
        .catalog
        .model_ids()
        .into_iter()
        .map(|(id, owned_by)| json!({"id": id, "object": "model", "created": created, "owned_by": owned_by}))
        .collect();
    // The embedding model goes before `auto`, which stays last.
    if let Some(e) = &state.embeddings {
        let at = data.len().saturating_sub(1);
        data.insert(at, json!({"id": e.config.name, "object": "model", "created": created, "owned_by": "switchyard"}));
    }
    Json(json!({"object": "list", "data": data}))
}
