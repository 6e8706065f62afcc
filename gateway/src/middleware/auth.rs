//! Virtual-key authentication for `/v1/*`: resolves the tenant and records it on the span.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::middleware::request_ctx::RequestCtx;
use crate::state::AppState;

/// Inserts the caller's tenant (`Arc<router::TenantProfile>`) or answers 401 `invalid_api_key`.
pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| super::credentials(v, "Bearer"));
    let authenticated = state.live.load().tenants.authenticate(bearer);
    match authenticated {
        Ok(tenant) => {
            if let Some(ctx) = req.extensions().get::<RequestCtx>() {
                ctx.span.record("tenant", tenant.name.as_str());
            }
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        Err(failure) => {
            // Key guessing never reaches the accounting: counted here, so it can be seen.
            state.metrics.auth_failures.with_label_values(&["api"]).inc();
            super::refused_before_the_body(req, ApiError::InvalidApiKey { failure }.into_response()).await
        }
    }
}
