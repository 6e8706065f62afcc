//! HTTP handlers, one module per endpoint group.

pub mod admin;
pub mod chat;
pub mod fallback;
pub mod health;
pub mod models;
pub mod route;

use axum::body::Body;

use crate::error::ApiError;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            ApiError::TooLarge { limit }
        } else {
            ApiError::InvalidRequest { message: format!("could not read the request body: {inner}"), param: None }
        }
    })
}
