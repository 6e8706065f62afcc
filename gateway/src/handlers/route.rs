//! `POST /v1/route`: the routing decision for a chat request, without generating.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use router::{Decision, TenantProfile};
use serde_json::{json, Value};

use crate::chat_request::parse_chat_request;
use crate::dispatch::plan;
use crate::error::ApiError;
use crate::handlers::read_body;
use crate::state::AppState;

/// Same body as chat completions; answers where it would go and why.
pub async fn route(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
    let req = parse_chat_request(&bytes)?;
    Ok(Json(decision_json(&plan(&state, &req, &headers, &tenant, false)?)))
}

/// The `/v1/route` body (INTERFACE.md §3), plus `rerouted`, `features` and, when the request
/// would be refused, `violation`. Never contains PII values: only kinds and counts.
pub fn decision_json(d: &Decision) -> Value {
    let mut body = json!({
        "tier": d.tier.as_str(),
        "target": d.target,
        "rule": d.rule,
        "complexity": d.complexity,
        "hard": d.hard,
        "privacy": {"tags": d.privacy.tags, "pii": d.privacy.pii},
        "redact": d.redact,
        "fallbacks": d.fallbacks,
        "reasons": d.reasons,
        "rerouted": d.rerouted,
        "features": {
            "code": d.features.code,
            "math": d.features.math,
            "turns": d.features.turns,
            "tools": d.features.tools,
            "language": d.features.language,
        },
    });
    if let Some(v) = &d.violation {
        body["violation"] = Value::String(v.clone());
    }
    body
}
