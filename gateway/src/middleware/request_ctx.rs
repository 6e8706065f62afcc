//! The outermost layer: gives every request an id and a `request` span, and writes one log line
//! and the `x-request-id` header when it ends.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{field::Empty, info, Instrument, Span};

/// The response header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-request facts shared with the handlers (an extension on the request).
#[derive(Clone, Debug)]
pub struct RequestCtx {
    /// The `request` span; handlers record `rule`, `target`, `tier` on it.
    pub span: Span,
    /// When the request arrived.
    pub started: Instant,
    /// The `x-request-id` value.
    pub request_id: String,
}

/// Inserts [`RequestCtx`], runs the request inside its span, sets `x-request-id`.
pub async fn request_ctx(mut req: Request, next: Next) -> Response {
    let request_id = format!("req-{}", uuid::Uuid::new_v4().simple());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
        tenant = Empty,
        rule = Empty,
        target = Empty,
        tier = Empty,
    );
    let ctx = RequestCtx { span: span.clone(), started: Instant::now(), request_id: request_id.clone() };
    req.extensions_mut().insert(ctx.clone());
    let id = HeaderValue::from_str(&request_id).ok();
    let handled = next.run(req).instrument(span.clone());
    // Provider calls made while handling it carry the id too (`X-Client-Request-Id`).
    let mut response = match &id {
        Some(id) => providers::CLIENT_REQUEST_ID.scope(id.clone(), handled).await,
        None => handled.await,
    };
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    span.in_scope(|| {
        info!(status = response.status().as_u16(), elapsed_us = ctx.started.elapsed().as_micros(), "answered");
    });
    response
}
