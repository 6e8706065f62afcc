//! The HTTP application: routes and the middleware stack, composed in one place.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::handlers::{admin, chat, completions, embeddings, fallback, health, models, responses, route};
use crate::middleware::admin_auth::admin_auth;
use crate::middleware::auth::authenticate;
use crate::middleware::content_encoding::refuse_encoded_bodies;
use crate::middleware::cut_at_shutdown::cut_at_shutdown;
use crate::middleware::request_ctx::request_ctx;
use crate::state::AppState;

/// Builds the application.
///
/// Layers, outermost first, and what each adds to the request:
/// 1. `request_ctx` — creates the request id and the `request` span (fields `request_id`,
///    `tenant`, `rule`, `target`, `tier`), inserts the `RequestCtx` extension, sets
///    `x-request-id` on every answer and logs one line when the head of the answer is ready.
/// 2. `cors` (on `/v1/*` routes, around 3 to 5, only with `server.cors_allowed_origins`) —
///    answers a browser's preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
///    allowed origin before authentication, as browsers send it without the key, and marks every
///    answer to such an origin readable by its page, the gateway's own headers included.
/// 3. `cut_at_shutdown` (on `/v1/*` routes, inside 2) — races the request with the drain's cut
///    (its deadline, or a second stop signal): a request not yet answered then gets 503
///    `shutting_down` with `Retry-After: 1`, and a stream under way a last error event in its
///    API's shape, instead of a broken connection.
/// 4. `authenticate` (on `/v1/*` routes only) — reads `Authorization: Bearer <virtual key>`,
///    inserts the tenant (`Arc<router::TenantProfile>`) and records `tenant` on the span, or
///    answers 401 `invalid_api_key`. Open mode (no tenant has keys): tenant `default`.
/// 5. `refuse_encoded_bodies` (on `/v1/*` routes, after 4) — a compressed body
///    (`Content-Encoding` other than `identity`) is answered 415 `unsupported_content_encoding`,
///    not misread as malformed JSON.
/// 6. `admin_auth` (on `/dashboard` and `/admin/*` only; beside 3 and 4, not after them) — the admin
///    key as Bearer, Basic password or session cookie, else 401 (`/dashboard`'s carries
///    `WWW-Authenticate: Basic` and the login form). `/metrics`, `/healthz`, `/readyz` and
///    `/dashboard/login` need no key.
/// 7. on `/dashboard*` and `/admin/*` (unknown paths there too), around 6 — `Cache-Control: no-store`
///    and `X-Frame-Options: DENY` on every answer: admin figures are never cached on the way,
///    and the dashboard is never framed by another site.
///
/// Bodies are read by the handlers themselves (`handlers::read_body`) so that an oversized body
/// gets the OpenAI-style 413 rather than a plain-text one. Unknown paths answer 404
/// `unknown_url`, known paths with another method 405, both as `OpenAI` error bodies.
pub fn build(state: Arc<AppState>) -> Router {
    let not_allowed = fallback::method_not_allowed;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions).fallback(not_allowed))
        .route("/v1/route", post(route::route).fallback(not_allowed))
        .route("/v1/models", get(models::list_models).fallback(not_allowed))
        .route("/v1/models/{*id}", get(models::retrieve_model).fallback(not_allowed))
        .route("/v1/embeddings", post(embeddings::embeddings).fallback(not_allowed))
        .route("/v1/completions", post(completions::completions).fallback(not_allowed))
        .route("/v1/responses", post(responses::create).fallback(not_allowed))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete).fallback(not_allowed))
        .route("/v1/responses/{id}/input_items", get(responses::input_items).fallback(not_allowed))
        .route_layer(axum::middleware::from_fn(refuse_encoded_bodies))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), authenticate))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), cut_at_shutdown));
    let api = match cors(&state.config.server.cors_allowed_origins) {
        Some(cors) => api.layer(cors),
        None => api,
    };
    let admin = Router::new()
        .route("/dashboard", get(admin::dashboard).fallback(not_allowed))
        .route("/admin/stats", get(admin::stats).fallback(not_allowed))
        .route("/admin/reload", post(admin::reload).fallback(not_allowed))
        // Unknown admin paths: 404 behind the key (no listing of what exists) and the headers.
        .route("/admin", axum::routing::any(fallback::unknown_url))
        .route("/admin/", axum::routing::any(fallback::unknown_url))
        .route("/admin/{*rest}", axum::routing::any(fallback::unknown_url))
        .route("/dashboard/", axum::routing::any(fallback::unknown_url))
        .route("/dashboard/{*rest}", axum::routing::any(fallback::unknown_url))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), admin_auth))
        .route("/dashboard/login", post(admin::login).fallback(not_allowed))
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/healthz", get(health::healthz).fallback(not_allowed))
        .route("/readyz", get(health::readyz).fallback(not_allowed))
        .route("/metrics", get(health::metrics).fallback(not_allowed))
        .fallback(fallback::unknown_url)
        .with_state(state)
        .layer(axum::middleware::from_fn(request_ctx))
}

/// The answer headers a browser page may read besides the CORS-safelisted ones: the names the
/// handlers set them by.
fn exposed_headers() -> [header::HeaderName; 18] {
    use crate::handlers::chat::header as set;
    [
        crate::middleware::request_ctx::REQUEST_ID,
        header::RETRY_AFTER,
        set::RATELIMIT_LIMIT_REQUESTS,
        set::RATELIMIT_LIMIT_TOKENS,
        set::RATELIMIT_REMAINING_REQUESTS,
        set::RATELIMIT_REMAINING_TOKENS,
        set::CACHE,
        set::CASCADE,
        set::COMPLEXITY,
        set::COST_USD,
        set::LOCAL_CONFIDENCE,
        set::LOCAL_MIN_LOGPROB,
        set::REROUTED,
        set::RULE,
        set::SPILLED,
        header::HeaderName::from_static(crate::dispatch::TAGS_HEADER),
        set::TARGET,
        set::TIER,
    ]
}

/// CORS for `/v1/*` from `origins` (`"*"`: any), or none when the list is empty. Requests carry
/// the key in `Authorization`, never a cookie, so credentials are not allowed; the headers a page
/// may send are those its preflight asks for (the `OpenAI` SDKs send their own `x-stainless-*`).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Checked by `ServerConfig::problems`: every entry is a valid header value.
        AllowOrigin::list(origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST, axum::http::Method::DELETE])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(exposed_headers())
            .max_age(std::time::Duration::from_mins(10)),
    )
}

/// What connections accepted after a stop signal get while the drain runs: `/healthz` and
/// `/readyz` (503, `draining`) as usual, so probes see the drain rather than a refused
/// connection, `/metrics`, so that what the draining requests cost reaches Prometheus, and 503
/// `shutting_down` with `Retry-After: 1` for everything else.
pub fn draining(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { crate::error::ApiError::ShuttingDown })
        .with_state(state)
        .layer(axum::middleware::from_fn(request_ctx))
}
