//! Tower layers, one per file; `app.rs` composes them.

pub mod request_ctx;
