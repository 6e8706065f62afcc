//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The local model, every `provider/model`, the local embedding model, and `auto`.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": models(&state)}))
}

/// One of them (ids hold a `/`: `provider/model`); 404 `model_not_found` otherwise.
pub async fn retrieve_model(State(state): State<Arc<AppState>>, path: Result<Path<String>, PathRejection>) -> Result<Json<Value>, ApiError> {
    // axum's own rejection would be plain text.
    let Path(id) = path.map_err(|_| ApiError::invalid("The model id in the path is not valid UTF-8.", "model"))?;
    models(&state).into_iter().find(|m| m["id"] == id.as_str()).map(Json).ok_or(ApiError::ModelNotFound { model: id })
}

fn models(state: &AppState) -> Vec<Value> {
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
    data
}
