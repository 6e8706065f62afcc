//! Request bodies are read as they come: one sent compressed (`Content-Encoding: gzip`) would
//! fail as "could not parse the JSON body", blaming JSON that is fine. It is refused by name.

use axum::extract::Request;
use axum::http::header::CONTENT_ENCODING;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::error::ApiError;

/// 415 `unsupported_content_encoding` for a body with a `Content-Encoding` other than `identity`.
pub async fn refuse_encoded_bodies(req: Request, next: Next) -> Response {
    let encoding = req.headers().get(CONTENT_ENCODING).map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_ascii_lowercase());
    match encoding {
        Some(encoding) if !encoding.is_empty() && encoding != "identity" => {
            super::refused_before_the_body(req, ApiError::UnsupportedEncoding { encoding }.into_response()).await
        }
        _ => next.run(req).await,
    }
}
