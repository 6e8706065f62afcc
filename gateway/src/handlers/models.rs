//! `GET /v1/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// The local model, every `provider/model`, and `auto`.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let created = state.started_unix;
    let data: Vec<Value> = state
        .catalog
        .model_ids()
        .into_iter()
        .map(|(id, owned_by)| json!({"id": id, "object": "model", "created": created, "owned_by": owned_by}))
        .chain(state.embeddings.iter().map(|e| json!({"id": e.config.name, "object": "model", "created": created, "owned_by": "switchyard"})))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
