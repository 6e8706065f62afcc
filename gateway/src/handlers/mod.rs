//! HTTP handlers, one module per endpoint group.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod fallback;
pub mod health;
pub mod models;
pub mod responses;
pub mod route;

use axum::body::Body;

use crate::error::ApiError;

/// How long a streamed answer may stay silent before a comment line (`: keep-alive`, which
/// clients skip) is written: a provider that sends nothing for a while (a reasoning model
/// thinking) would otherwise leave the connection idle long enough for proxies and load
/// balancers to close it (nginx's `proxy_read_timeout` and AWS ALB's idle timeout are 60 s), and
/// a client whose host vanished without closing its connection is noticed at a write.
pub const STREAM_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// `events` as an SSE answer, with the keep-alive comments.
pub fn event_stream<S, E>(events: S) -> axum::response::Response
where
    S: futures::Stream<Item = Result<axum::response::sse::Event, E>> + Send + 'static,
    E: Into<axum::BoxError>,
{
    use axum::response::IntoResponse as _;
    axum::response::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::new().interval(STREAM_KEEP_ALIVE).text("keep-alive")).into_response()
}

/// Reads the whole body, refusing more than `limit` bytes with 413 and a body that takes longer
/// than `timeout` to arrive with 408. A declared `Content-Length` over `limit` is refused at once,
/// before any of the body is waited for.
pub async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> Result<bytes::Bytes, ApiError> {
    if usize::try_from(axum::body::HttpBody::size_hint(&body).lower()).map_or(true, |declared| declared > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout { after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) })?;
    read.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            ApiError::TooLarge { limit }
        } else if abandoned(&*inner) {
            ApiError::BodyAbandoned
        } else {
            ApiError::InvalidRequest { message: format!("could not read the request body: {inner}"), param: None }
        }
    })
}

/// The body's read failed because the client closed or reset the connection (hyper's error,
/// somewhere in the chain of wrappers), rather than sending something malformed.
fn abandoned(err: &(dyn std::error::Error + 'static)) -> bool {
    let gone = |io: &std::io::Error| {
        matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe)
    };
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message() || h.is_closed()) || e.downcast_ref::<std::io::Error>().is_some_and(gone)
    })
}
