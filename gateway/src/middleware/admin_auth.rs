//! The admin key for `/admin/*` and `/dashboard`: accepted as `Authorization: Bearer <key>`, as
//! HTTP Basic (any user name, the key as password, so a browser prompts), or as the `HttpOnly`
//! session cookie `POST /dashboard/login` sets. Never from a URL. Without a configured key the
//! admin pages are open.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::admin_throttle::{MAX_FAILURES, UNKNOWN_PEER};
use crate::error::ApiError;
use crate::state::AppState;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "switchyard_session";

/// Compares in constant time (for equal lengths; lengths are not secret).
pub fn key_matches(given: &str, key: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

/// The key the request presents (Bearer, or a Basic password), if any.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    if let Some(bearer) = super::credentials(authorization, "Bearer") {
        return Some(bearer.to_owned());
    }
    if let Some(basic) = super::credentials(authorization, "Basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic).unwrap_or_default();
        let text = String::from_utf8(decoded).unwrap_or_default();
        return Some(text.split_once(':').map(|(_, password)| password.to_owned()).unwrap_or_default());
    }
    // Any other scheme presents a key that cannot match.
    Some(String::new())
}

/// A dashboard session cookie `POST /dashboard/login` handed out and that has not expired.
fn has_session(headers: &HeaderMap, state: &AppState) -> bool {
    let token = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE).and_then(|rest| rest.strip_prefix('=')).map(str::to_owned));
    token.is_some_and(|t| state.admin_sessions.contains_key(&t))
}

/// The client's address (from the connection), for counting its wrong keys.
pub fn peer(req: &Request) -> IpAddr {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(UNKNOWN_PEER, |c| c.0.ip())
}

/// Checks a presented key against `key`, counting a wrong one against `peer`: `Err` with 401, or
/// 429 while the address has used up its attempts (then the key is not even compared).
pub fn check_key(state: &AppState, peer: IpAddr, given: &str, key: &str) -> Result<(), ApiError> {
    let now = Instant::now();
    if let Some(retry_after_s) = state.admin_throttle.locked(peer, now) {
        return Err(ApiError::AdminLocked { retry_after_s });
    }
    if key_matches(given, key) {
        return Ok(());
    }
    state.metrics.auth_failures.with_label_values(&["admin"]).inc();
    if state.admin_throttle.failed(peer, now) {
        tracing::warn!(%peer, max = MAX_FAILURES, "too many wrong admin keys from this address: its key attempts get 429 for five minutes");
    }
    Err(ApiError::AdminKeyRequired)
}

/// Lets the request through with the admin key or a dashboard session, else 401 (the
/// dashboard's 401 asks for Basic credentials and carries the login form); 429 for an address
/// that sent too many wrong keys.
pub async fn admin_auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.admin_key else { return next.run(req).await };
    if has_session(req.headers(), &state) {
        return next.run(req).await;
    }
    let err = if let Some(given) = presented_key(req.headers()) {
        match check_key(&state, peer(&req), &given, key) {
            Ok(()) => return next.run(req).await,
            Err(err) => err,
        }
    } else {
        state.metrics.auth_failures.with_label_values(&["admin"]).inc();
        ApiError::AdminKeyRequired
    };
    if req.uri().path() == "/dashboard" && matches!(err, ApiError::AdminKeyRequired) {
        let mut response = (StatusCode::UNAUTHORIZED, Html(crate::handlers::admin::LOGIN_PAGE)).into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"switchyard\""));
        return response;
    }
    super::refused_before_the_body(req, err.into_response()).await
}
