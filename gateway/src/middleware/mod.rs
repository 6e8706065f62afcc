//! Tower layers, one per file; `app.rs` composes them.

pub mod auth;
pub mod request_ctx;
