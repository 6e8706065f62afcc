//! OpenAI-style answers for unknown paths and wrong methods.

use axum::http::{Method, Uri};

use crate::error::ApiError;

/// 404 for any path no route serves.
pub async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownUrl { method: shown_path(method.as_str()), path: shown_path(uri.path()) }
}

/// A path (or method) as an error quotes it: at most 256 characters (either can be as long as a
/// head may be, and the error would echo all of it).
fn shown_path(path: &str) -> String {
    const MAX: usize = 256;
    match path.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_owned(),
    }
}

/// 405 for a known path with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: shown_path(method.as_str()), path: shown_path(uri.path()) }
}
