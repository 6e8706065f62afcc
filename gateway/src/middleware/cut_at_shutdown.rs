//! The drain's deadline (or a second stop signal) cuts the requests still running. Without a
//! last word they would end as a broken connection: a client could not tell a cut answer from a
//! network fault, and would not know to retry. Here a request not yet answered gets 503
//! `shutting_down` with `Retry-After` (the `OpenAI` SDKs retry it), and a stream under way gets
//! a final error event in its API's shape before it ends.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::state::AppState;

/// Races the request with the cut; a streamed answer is watched until it ends.
pub async fn cut_at_shutdown(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut cut = state.cut.subscribe();
    let responses_api = req.uri().path().starts_with("/v1/responses");
    let response = tokio::select! {
        biased;
        response = next.run(req) => response,
        Ok(_) = cut.wait_for(|cut| *cut) => return ApiError::ShutdownCut.into_response(),
    };
    let streamed = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::from_stream(ended_by_the_cut(body, cut, responses_api)))
}

/// What the stream has written so far that its last event needs.
struct Watched {
    body: axum::body::BodyDataStream,
    cut: watch::Receiver<bool>,
    responses_api: bool,
    /// The Responses API numbers its events; the error event takes the next number.
    last_sequence: Option<u64>,
}

/// `body`'s frames until it ends or the cut comes; at the cut, the body is dropped (the answer's
/// record is written as cut) and the error event goes out last.
fn ended_by_the_cut(body: Body, cut: watch::Receiver<bool>, responses_api: bool) -> impl futures::Stream<Item = Result<Bytes, axum::Error>> {
    let watched = Watched { body: body.into_data_stream(), cut, responses_api, last_sequence: None };
    futures::stream::unfold(Some(watched), |state| async move {
        let mut w = state?;
        let next = tokio::select! {
            biased;
            frame = w.body.next() => Some(frame?),
            Ok(_) = w.cut.wait_for(|cut| *cut) => None,
        };
        if let Some(frame) = next {
            if let (true, Ok(bytes)) = (w.responses_api, &frame) {
                w.last_sequence = sequence_number(bytes).or(w.last_sequence);
            }
            Some((frame, Some(w)))
        } else {
            let last = cut_event(w.responses_api, w.last_sequence);
            drop(w);
            Some((Ok(last), None))
        }
    })
}

/// The last `"sequence_number":N` in an SSE frame.
fn sequence_number(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\":";
    let at = frame.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits: String = frame[at..].iter().skip_while(|b| **b == b' ').take_while(|b| b.is_ascii_digit()).map(|b| char::from(*b)).collect();
    digits.parse().ok()
}

/// The stream's last words: the Responses API's `error` event, or a chat/completions error
/// object followed by `[DONE]`, as a failure after the first chunk is written.
fn cut_event(responses_api: bool, last_sequence: Option<u64>) -> Bytes {
    let error = ApiError::ShutdownCut.body().error;
    if responses_api {
        let data = serde_json::json!({
            "type": "error",
            "code": error.code,
            "message": error.message,
            "param": null,
            "sequence_number": last_sequence.map_or(0, |n| n + 1),
        });
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    } else {
        let data = serde_json::json!({"error": error});
        Bytes::from(format!("data: {data}\n\ndata: [DONE]\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[test]
    fn the_last_sequence_number_of_a_frame_is_found() {
        assert_eq!(sequence_number(b"event: response.output_text.delta\ndata: {\"type\":\"x\",\"sequence_number\":17,\"delta\":\"a\"}\n\n"), Some(17));
        assert_eq!(sequence_number(b"data: {\"sequence_number\": 3}\n\ndata: {\"sequence_number\":4}\n\n"), Some(4));
        assert_eq!(sequence_number(b": keep-alive\n\n"), None);
    }

    #[tokio::test]
    async fn a_stream_cut_under_way_ends_with_an_error_event_in_its_apis_shape() {
        for responses_api in [false, true] {
            let (cut, watching) = watch::channel(false);
            let frames = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"sequence_number\":5}\n\n"))])
                .chain(futures::stream::pending());
            let mut out = Box::pin(ended_by_the_cut(Body::from_stream(frames), watching, responses_api));
            assert_eq!(out.next().await.unwrap().unwrap(), Bytes::from_static(b"data: {\"sequence_number\":5}\n\n"));
            cut.send_replace(true);
            let last = String::from_utf8(out.next().await.unwrap().unwrap().to_vec()).unwrap();
            if responses_api {
                assert!(last.starts_with("event: error\ndata: ") && last.contains("\"sequence_number\":6") && last.contains("shutting_down"), "{last}");
            } else {
                assert!(last.contains("\"code\":\"shutting_down\"") && last.ends_with("data: [DONE]\n\n"), "{last}");
            }
            assert!(out.next().await.is_none(), "nothing after the last words");
        }
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_the_cut_is_passed_on_whole() {
        let (_cut, watching) = watch::channel(false);
        let frames = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"data: a\n\n")), Ok(Bytes::from_static(b"data: [DONE]\n\n"))]);
        let out: Vec<Bytes> = ended_by_the_cut(Body::from_stream(frames), watching, false).map(Result::unwrap).collect().await;
        assert_eq!(out, [Bytes::from_static(b"data: a\n\n"), Bytes::from_static(b"data: [DONE]\n\n")]);
    }
}
