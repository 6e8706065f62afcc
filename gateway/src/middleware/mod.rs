//! Tower layers, one per file; `app.rs` composes them.

pub mod admin_auth;
pub mod auth;
pub mod request_ctx;
