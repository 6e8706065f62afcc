//! Tower layers, one per file; `app.rs` composes them.

pub mod admin_auth;
pub mod auth;
pub mod content_encoding;
pub mod cut_at_shutdown;
pub mod request_ctx;

/// The most of an unread request body a refusal reads and drops, and for how long.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// `response` for a request refused before its body was read (a wrong key, an encoded body).
/// A small body is read and dropped first, so the keep-alive connection carries the client's
/// next request; a larger or slower one gets `Connection: close` on the answer. Otherwise hyper
/// closes the connection after the answer without saying so, and a client that sent its next
/// request on it meanwhile sees "Server disconnected without sending a response".
pub async fn refused_before_the_body(body: axum::body::Body, mut response: axum::response::Response) -> axum::response::Response {
    use http_body_util::BodyExt as _;
    let drained = tokio::time::timeout(DRAIN_FOR, http_body_util::Limited::new(body, DRAIN_MAX_BYTES).collect()).await;
    if !matches!(drained, Ok(Ok(_))) {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// The credentials of an `Authorization` value in `scheme` (`Bearer`, `Basic`): scheme names
/// are case-insensitive (RFC 9110), and any run of spaces may follow them.
pub fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = authorization.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}
