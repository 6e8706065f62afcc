//! The admin key for `/admin/*` and `/dashboard`: accepted as `Authorization: Bearer <key>`, as
//! HTTP Basic (any user name, the key as password, so a browser prompts), or as the `HttpOnly`
//! session cookie `POST /dashboard/login` sets. Never from a URL. Without a configured key the
//! admin pages are open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "switchyard_session";

/// Compares in constant time (for equal lengths; lengths are not secret).
pub fn key_matches(given: &str, key: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

fn authorized(headers: &HeaderMap, state: &AppState, key: &str) -> bool {
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if let Some(bearer) = authorization.strip_prefix("Bearer ") {
        return key_matches(bearer.trim(), key);
    }
    if let Some(basic) = authorization.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).unwrap_or_default();
        let text = String::from_utf8(decoded).unwrap_or_default();
        return text.split_once(':').is_some_and(|(_, password)| key_matches(password, key));
    }
    let token = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE).and_then(|rest| rest.strip_prefix('=')).map(str::to_owned));
    token.is_some_and(|t| state.admin_sessions.contains_key(&t))
}

/// Lets the request through with the admin key, else 401 (the dashboard's 401 asks for Basic
/// credentials and carries the login form).
pub async fn admin_auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.admin_key else { return next.run(req).await };
    if authorized(req.headers(), &state, key) {
        return next.run(req).await;
    }
    state.metrics.auth_failures.with_label_values(&["admin"]).inc();
    if req.uri().path() == "/dashboard" {
        let mut response = (StatusCode::UNAUTHORIZED, Html(crate::handlers::admin::LOGIN_PAGE)).into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"switchyard\""));
        return response;
    }
    ApiError::AdminKeyRequired.into_response()
}
