//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use router::TenantProfile;
use serde_json::{json, Value};

use crate::catalog::ModelChoice;
use crate::error::ApiError;
use crate::state::AppState;

/// The local model, every `provider/model`, the local embedding model, and `auto`: those the
/// caller's tenant may use (a model running outside its residency is not listed).
pub async fn list_models(State(state): State<Arc<AppState>>, Extension(tenant): Extension<Arc<TenantProfile>>) -> Json<Value> {
    Json(json!({"object": "list", "data": models(&state, &tenant)}))
}

/// One of them, by its id (ids hold a `/`: `provider/model`) or any other spelling a request's
/// `model` may use (`local`, `local/<name>`, a bare name one provider serves); 404
/// `model_not_found` otherwise.
pub async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // axum's own rejection would be plain text.
    let Path(id) = path.map_err(|_| ApiError::invalid("The model id in the path is not valid UTF-8.", "model"))?;
    let listed = match state.catalog.resolve(&id) {
        Some(ModelChoice::Target(target)) if state.catalog.local_target().as_deref() == Some(target.as_str()) => {
            state.config.local.as_ref().map_or(target, |l| l.name.clone())
        }
        Some(ModelChoice::Target(target)) => target,
        Some(ModelChoice::Auto) | None => id.clone(),
    };
    if let Some(model) = models(&state, &tenant).into_iter().find(|m| m["id"] == listed.as_str()) {
        return Ok(Json(model));
    }
    // A name a rule claims (`when.requested_model`) is one chat serves, though no provider lists
    // it — if it would reach a target this tenant may use.
    if state.live.load().router.policy().claims(&id, &tenant.name) && routable(&state, &tenant, &id) {
        return Ok(Json(json!({"id": id, "object": "model", "created": state.started_unix, "owned_by": "switchyard"})));
    }
    Err(ApiError::ModelNotFound { model: id })
}

/// True when an everyday request (no PII, easy) naming `model` — `auto`, or a name a rule
/// claims — from this tenant would be routed to a target it may use: judged by the router as chat
/// is, with the tenant's residency, tags and `models`.
fn routable(state: &AppState, tenant: &TenantProfile, model: &str) -> bool {
    let input = router::RouteInput {
        requested_model: model,
        tenant: &tenant.name,
        residency: &tenant.residency,
        models: &tenant.models,
        tags: tenant.tags.clone(),
        ..router::RouteInput::default()
    };
    state.live.load().router.decide(&input).violation.is_none()
}

fn models(state: &AppState, tenant: &TenantProfile) -> Vec<Value> {
    let created = state.started_unix;
    let local_region = state.config.server.region.as_str();
    let live = state.live.load();
    let topology = live.router.topology();
    // Listed: what the tenant may use — inside its residency and among its `models`.
    let allowed = |id: &str, owned_by: &str| {
        let local = owned_by == "switchyard-local";
        let region = if local { Some(local_region) } else { topology.get(id).and_then(|t| t.region.as_deref()) };
        let target = if local { format!("local/{id}") } else { id.to_owned() };
        if id == crate::catalog::AUTO {
            return routable(state, tenant, id);
        }
        router::region_allowed(&tenant.residency, region) && router::model_allowed(&tenant.models, &target)
    };
    let mut data: Vec<Value> = state
        .catalog
        .model_ids()
        .into_iter()
        .filter(|(id, owned_by)| allowed(id, owned_by))
        .map(|(id, owned_by)| json!({"id": id, "object": "model", "created": created, "owned_by": owned_by}))
        .collect();
    // The embedding model goes before `auto`, which stays last.
    let embeddings_allowed = |e: &&crate::handlers::embeddings::LocalEmbeddings| {
        router::region_allowed(&tenant.residency, Some(local_region)) && router::model_allowed(&tenant.models, &e.config.target())
    };
    if let Some(e) = state.embeddings.as_ref().filter(embeddings_allowed) {
        let at = data.len().saturating_sub(1);
        data.insert(at, json!({"id": e.config.name, "object": "model", "created": created, "owned_by": "switchyard"}));
    }
    data
}
