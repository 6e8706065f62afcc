//! `POST /v1/route`: the routing decision for a chat request, without generating.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use router::{Decision, TenantProfile};
use serde_json::{json, Value};

use crate::accounting::estimate_tokens;
use crate::budgets::OnExceed;
use crate::chat_request::parse_chat_request;
use crate::dispatch::plan;
use crate::error::ApiError;
use crate::handlers::chat::{candidates, is_local, worst_case_nusd};
use crate::handlers::read_body;
use crate::privacy;
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
    let decision = plan(&state, &req, &headers, &tenant, false)?;
    // What the budget would do with it, on the spend as last seen: chat admits (and may re-route
    // or refuse) only after the decision.
    let reserve = worst_case_nusd(&state, &req, &decision, estimate_tokens(privacy::text_chars(&req)), &tenant.name);
    let refusal = |mut body: Value, why: &str| {
        if let Some(reasons) = body["reasons"].as_array_mut() {
            reasons.push(Value::String(format!("the tenant's budget cannot hold the request's worst case: refused (429 budget_exceeded, {why})")));
        }
        body
    };
    let mut body = match state.limiter.would_exceed(&tenant.name, reserve) {
        None => return Ok(Json(decision_json(&decision))),
        // As chat does: `local`, or a spilled request (already bound for the local engine), is
        // planned again for the local engine, and refused if a remote target is still among its
        // candidates (the engine cannot take it: an image, a tenant without `local`…).
        Some(on_exceed) if on_exceed == OnExceed::Local || decision.spilled.is_some() => {
            let kept = plan(&state, &req, &headers, &tenant, true)?;
            if candidates(&kept).any(|t| !is_local(&state, t)) {
                refusal(decision_json(&kept), "no local target can serve it")
            } else {
                decision_json(&kept)
            }
        }
        Some(_) => refusal(decision_json(&decision), "on_exceed = \"reject\""),
    };
    body["budget_exceeded"] = Value::Bool(true);
    Ok(Json(body))
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
