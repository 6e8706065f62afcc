//! Tower layers, one per file; `app.rs` composes them.

pub mod admin_auth;
pub mod auth;
pub mod content_encoding;
pub mod cut_at_shutdown;
pub mod request_ctx;

/// The credentials of an `Authorization` value in `scheme` (`Bearer`, `Basic`): scheme names
/// are case-insensitive (RFC 9110), and any run of spaces may follow them.
pub fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = authorization.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}
