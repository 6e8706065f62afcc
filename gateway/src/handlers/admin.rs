//! `/dashboard` (one self-contained page), `POST /dashboard/login` (admin key → session cookie)
//! and `/admin/stats` (the JSON the page draws).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::accounting::unix_ms;
use crate::budgets::nanos_to_usd;
use crate::error::ApiError;
use crate::handlers::read_body;
use crate::middleware::admin_auth::{check_key, peer, SESSION_COOKIE};
use crate::state::{AppState, Reloaded};

/// The dashboard page: no external assets, it draws `/admin/stats`.
pub const DASHBOARD_PAGE: &str = include_str!("dashboard.html");
/// The login form the dashboard's 401 carries.
pub const LOGIN_PAGE: &str = include_str!("login.html");

/// `GET /dashboard`.
pub async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD_PAGE)
}

/// `POST /dashboard/login` with `{"key": "…"}`: sets an `HttpOnly` session cookie.
pub async fn login(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let peer = peer(&req);
    let bytes = read_body(req.into_body(), 4096, state.body_timeout()).await?;
    let given = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_owned))
        .ok_or_else(|| ApiError::invalid("The body must be a JSON object with the admin key as a string: {\"key\": \"…\"}.", "key"))?;
    let Some(key) = &state.admin_key else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    check_key(&state, peer, &given, key)?;
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    state.admin_sessions.insert(token.clone(), ());
    let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", crate::state::ADMIN_SESSION_TTL.as_secs());
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /admin/reload`: reads the configuration file again and applies its `[[tenants]]`,
/// policy and models' prices, as SIGHUP does: 200 `{"reloaded": true, "tenants", "rules",
/// "warnings"}`, or 422 `reload_refused` naming each problem (the running configuration stays).
pub async fn reload(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    match state.reload_config().await {
        Reloaded::Applied { tenants, rules, warnings } => Ok(Json(json!({"reloaded": true, "tenants": tenants, "rules": rules, "warnings": warnings}))),
        Reloaded::Refused { problems } => Err(ApiError::ReloadRefused { problems }),
    }
}

/// `GET /admin/stats`: the last hour and day per tenant and target, requests per minute, the
/// engine and the circuits. With `[redis]`, request figures are every replica's (each publishes
/// its rollups every few seconds) and budgets the shared store's; else this replica's.
pub async fn stats(State(state): State<Arc<AppState>>) -> Json<Value> {
    let now_ms = unix_ms();
    let now_minute = now_ms / 60_000;
    let own = &state.ledger.rollups;
    let merged = match &state.cluster {
        Some(cluster) => match cluster.merged(own, now_ms).await {
            Ok(view) => Some(view),
            Err(err) => {
                tracing::warn!(error = %err, "cluster figures unavailable; showing this replica's");
                None
            }
        },
        None => None,
    };
    let (rollups, scope, replicas) = match &merged {
        Some((rollups, replicas)) => (rollups, "cluster", json!(replicas)),
        None => (own, "replica", Value::Null),
    };
    let engine = state.local.as_ref().map(|l| {
        let s = l.engine().stats();
        #[allow(clippy::cast_precision_loss)]
        let per_s = |tokens: u64, us: u64| if us == 0 { 0.0 } else { tokens as f64 * 1e6 / us as f64 };
        json!({
            "queued": s.queued, "active": s.active, "kv_cells_used": s.kv_cells_used,
            "prefill_tokens_per_s": per_s(s.prompt_tokens_total, s.prefill_us_total),
            "decode_tokens_per_s": per_s(s.completion_tokens_total, s.decode_us_total),
            "displaced_total": s.displaced_total,
            "tenants": l.engine().tenants().iter().map(|share| (
                share.tenant.as_deref().unwrap_or("none").to_owned(),
                json!({"running": share.running, "waiting": share.waiting}),
            )).collect::<serde_json::Map<String, Value>>(),
        })
    });
    let circuits: serde_json::Map<String, Value> =
        state.remotes.iter().map(|(name, r)| (name.clone(), Value::Bool(r.provider.is_open()))).collect();
    Json(json!({
        "scope": scope,
        "replica": state.cluster.as_ref().map(|c| c.replica.clone()),
        "replicas": replicas,
        "requests_total": state.ledger.requests(),
        "hour": rollups.window(now_minute, 60),
        "day": rollups.window(now_minute, 24 * 60),
        "requests_per_minute": rollups.per_minute(now_minute, 60),
        "engine": engine,
        "circuits": circuits,
        "spilling": state.spillover(&state.live.load()).map(crate::spill::Spillover::spilling),
        "shadow": state.shadow.as_ref().map(|s| s.stats()),
        "budgets": state.limiter.budgets().iter().map(|(tenant, budget, spend)| (tenant.clone(), json!({
            "daily_usd": budget.daily_usd, "monthly_usd": budget.monthly_usd,
            "spent_today_usd": nanos_to_usd(spend.daily_nusd), "spent_month_usd": nanos_to_usd(spend.monthly_nusd),
            "reserved_usd": nanos_to_usd(spend.reserved_nusd), "used_share": spend.used_share(budget.limits()),
        }))).collect::<serde_json::Map<String, Value>>(),
        "settlements_waiting": state.limiter.settlements_waiting(),
        "in_flight": state.in_flight.total(),
        "recent": state.ledger.recent().iter().rev().take(20).map(|r| json!({
            "request_id": r.request_id, "tenant": r.tenant, "target": r.target, "status": r.status,
            "latency_ms": r.latency_ms, "cost_usd": r.cost_usd,
        })).collect::<Vec<_>>(),
    }))
}
