//! Tower layers, one per file; `app.rs` composes them.

pub mod admin_auth;
pub mod auth;
pub mod content_encoding;
pub mod cut_at_shutdown;
pub mod request_ctx;

/// The most of an unread request body a refusal reads and drops, and for how long.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// `response` for `req`, refused before its body was read (a wrong key, an encoded body). A
/// small body is read and dropped first, so the keep-alive connection carries the client's next
/// request; a larger or slower one, or one the client holds back for `Expect: 100-continue` (it
/// need not be sent at all), gets `Connection: close` on the answer. Otherwise hyper closes the
/// connection after the answer without saying so, and a client that sent its next request on it
/// meanwhile sees "Server disconnected without sending a response".
pub async fn refused_before_the_body(req: axum::extract::Request, mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, EXPECT};
    use http_body_util::BodyExt as _;
    let headers = req.headers();
    let held_back = headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_large = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|length| length > DRAIN_MAX_BYTES);
    let drained = !held_back
        && !too_large
        && matches!(tokio::time::timeout(DRAIN_FOR, http_body_util::Limited::new(req.into_body(), DRAIN_MAX_BYTES).collect()).await, Ok(Ok(_)));
    if !drained {
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
