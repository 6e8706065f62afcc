//! OpenAI-style answers for unknown paths and wrong methods.

use axum::http::{Method, Uri};

use crate::error::ApiError;

/// 404 for any path no route serves.
pub async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownUrl { method: method.to_string(), path: uri.path().to_owned() }
}

/// 405 for a known path with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}
