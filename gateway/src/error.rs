//! `ApiError`: every error a client can see, mapped once to status, `OpenAI` error body and log level.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use providers::wire::{ErrorBody, ErrorDetail};
use providers::ProviderError;

/// How long a request its tenant's budget refused would have to wait to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetWait {
    /// Seconds until the budget period ends (or in-flight requests settle).
    Seconds(u64),
    /// Never: its worst case alone is more than the whole limit of a period (`daily`,
    /// `monthly`). Telling the client to retry after midnight would only bring the same refusal.
    Never {
        /// The period whose limit it exceeds.
        period: &'static str,
        /// That limit.
        limit_nusd: u64,
        /// The request's worst-case cost.
        worst_nusd: u64,
    },
}

impl BudgetWait {
    /// The wait for a refusal of `worst_nusd` under `limits`, where the store says `retry_after_s`.
    pub fn of(limits: crate::budgets::BudgetLimits, worst_nusd: u64, retry_after_s: u64) -> Self {
        let never = [("daily", limits.daily_nusd), ("monthly", limits.monthly_nusd)]
            .into_iter()
            .find_map(|(period, limit)| limit.filter(|l| worst_nusd > *l).map(|limit_nusd| Self::Never { period, limit_nusd, worst_nusd }));
        never.unwrap_or(Self::Seconds(retry_after_s))
    }

    /// The `Retry-After` to send: none when no wait helps.
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            Self::Seconds(s) => Some(s),
            Self::Never { .. } => None,
        }
    }
}

impl std::fmt::Display for BudgetWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::budgets::nanos_to_usd;
        match self {
            Self::Seconds(s) => write!(f, "this request's worst-case cost does not fit in the tenant's remaining budget; retry after {s} s or lower max_tokens."),
            Self::Never { period, limit_nusd, worst_nusd } => write!(
                f,
                "this request's worst-case cost (${} for its prompt and its max_tokens on every choice, at the dearest target that may serve it) is more than the tenant's whole {period} budget (${}), so no wait makes it fit; lower max_tokens (or n).",
                nanos_to_usd(*worst_nusd),
                nanos_to_usd(*limit_nusd)
            ),
        }
    }
}

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid request.
    #[error("{message}")]
    InvalidRequest {
        /// For the client.
        message: String,
        /// The offending field.
        param: Option<String>,
    },
    /// The body is larger than `max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive in time (`[server].body_timeout_ms`).
    #[error("The request body did not arrive within {after_ms} ms.")]
    BodyTimeout {
        /// The timeout.
        after_ms: u64,
    },
    /// The body is compressed (`Content-Encoding`), which the gateway does not decode.
    #[error("Request bodies must not be compressed: Content-Encoding {encoding:?} is not supported; send the JSON as it is.")]
    UnsupportedEncoding {
        /// The encoding sent.
        encoding: String,
    },
    /// The client closed the connection before its request body was complete: nobody reads the
    /// answer, and the record says 499 (client closed request), not a client error.
    #[error("The connection closed before the request body was complete.")]
    BodyAbandoned,
    /// The tenant already has `[server].max_in_flight_per_tenant` requests running.
    #[error("Too many requests in flight for this key (at most {limit} at once); retry when one finishes.")]
    TooManyInFlight {
        /// The limit.
        limit: usize,
    },
    /// No such model.
    #[error("The model `{model}` does not exist or you do not have access to it.")]
    ModelNotFound {
        /// As sent.
        model: String,
    },
    /// Missing or unknown virtual key.
    #[error("{}", match failure {
        crate::tenants::AuthFailure::Missing => "You didn't provide an API key. Send your virtual key as `Authorization: Bearer <key>`.",
        crate::tenants::AuthFailure::Unknown => "Incorrect API key provided.",
    })]
    InvalidApiKey {
        /// Missing or unknown (the key itself is never kept).
        failure: crate::tenants::AuthFailure,
    },
    /// The tenant's requests or tokens per minute are used up.
    #[error("Rate limit reached for {what} per minute; retry after {retry_after_s} s.")]
    TenantRateLimited {
        /// `requests` or `tokens`.
        what: &'static str,
        /// Seconds until the request fits.
        retry_after_s: u64,
    },
    /// The prompt and `max_tokens` do not fit the model's context, named by the field the
    /// client sent (`input` of a Responses request, `prompt` of a legacy completion).
    #[error("{message}")]
    ContextLengthExceeded {
        /// For the client.
        message: String,
        /// The field holding the prompt.
        param: String,
    },
    /// The prompt alone is more than the tenant's whole tokens-per-minute allowance: no wait
    /// makes it fit, so no `Retry-After` (as `OpenAI` answers "Request too large").
    #[error("Request too large for the tenant's tokens per minute (TPM): limit {limit}, requested {requested}. Shorten the prompt to run it.")]
    RequestOverTokenLimit {
        /// The tenant's `tpm`.
        limit: u32,
        /// The prompt's estimated tokens.
        requested: u64,
    },
    /// The tenant's budget cannot cover the request (`on_exceed = "reject"`, or no local engine
    /// may serve it instead).
    #[error("Budget exceeded: {wait}")]
    BudgetExceeded {
        /// How long until it could fit, if ever.
        wait: BudgetWait,
    },
    /// A stored response could not be deleted from the shared store (Redis unreachable): saying
    /// it was deleted while it stays readable would be false.
    #[error("The response could not be deleted right now (the shared store is unreachable); it is unchanged. Retry shortly.")]
    ResponseStoreUnavailable,
    /// The gateway received SIGTERM/SIGINT and finishes what it has; new requests go elsewhere.
    #[error("This gateway is shutting down and takes no new requests; retry on another replica.")]
    ShuttingDown,
    /// The drain's deadline (or a second stop signal) came before this request's answer.
    #[error("This gateway stopped before the answer was finished (its shutdown deadline passed); retry on another replica.")]
    ShutdownCut,
    /// Redis (`[redis]`) is unreachable and `on_outage = "fail_closed"`.
    #[error("Limits and budgets cannot be checked right now (the shared store is unreachable); requests that could reach a paid provider are refused until it returns.")]
    StoreUnavailable,
    /// `/admin/*` without the admin key.
    #[error("This endpoint needs the admin key (Authorization: Bearer, HTTP Basic password, or the dashboard's session).")]
    AdminKeyRequired,
    /// Too many wrong admin keys from this client address ([`crate::admin_throttle`]).
    #[error("Too many wrong admin keys from this address; retry after {retry_after_s} s.")]
    AdminLocked {
        /// Seconds until the address may try again.
        retry_after_s: u64,
    },
    /// The privacy or residency guard forbids every target for this request.
    #[error("The request may not be served: {reason}")]
    PolicyViolation {
        /// Which rule and target, and why.
        reason: String,
    },
    /// No stored response with this id for this tenant (never stored, expired, or another tenant's).
    #[error("Response with id '{id}' not found.")]
    ResponseNotFound {
        /// As sent.
        id: String,
    },
    /// An `item_reference` naming no item of a response this tenant stored.
    #[error("Item with id '{id}' not found.")]
    ItemNotFound {
        /// As sent.
        id: String,
        /// Where it was referenced (`input[2]`).
        param: String,
    },
    /// `POST /admin/reload` left the running configuration as it was.
    #[error("The configuration was not reloaded; the gateway still serves the one loaded before: {}", .problems.join("; "))]
    ReloadRefused {
        /// Each problem, naming file, line and key where known.
        problems: Vec<String>,
    },
    /// No such route.
    #[error("Invalid URL ({method} {path})")]
    UnknownUrl {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists with other methods.
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A provider or the engine failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl ApiError {
    /// Shorthand for a 400 naming a field.
    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    /// Status, error body and `Retry-After`; the one place these are decided.
    fn parts(&self) -> (StatusCode, ErrorDetail, Option<u64>) {
        let detail = |kind: &str, code: Option<&str>, param: Option<String>| ErrorDetail {
            message: self.to_string(),
            kind: kind.to_owned(),
            param,
            code: code.map(str::to_owned),
            innererror: None,
        };
        match self {
            Self::InvalidRequest { param, .. } => {
                (StatusCode::BAD_REQUEST, detail("invalid_request_error", None, param.clone()), None)
            }
            Self::TooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, detail("invalid_request_error", Some("request_too_large"), None), None)
            }
            Self::BodyTimeout { .. } => {
                (StatusCode::REQUEST_TIMEOUT, detail("invalid_request_error", Some("request_timeout"), None), None)
            }
            Self::UnsupportedEncoding { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, detail("invalid_request_error", Some("unsupported_content_encoding"), None), None)
            }
            Self::BodyAbandoned => (
                StatusCode::from_u16(crate::accounting::CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST),
                detail("invalid_request_error", Some("client_closed_request"), None),
                None,
            ),
            Self::TooManyInFlight { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                detail("rate_limit_error", Some("rate_limit_exceeded"), None),
                Some(1),
            ),
            Self::ModelNotFound { .. } => (
                StatusCode::NOT_FOUND,
                detail("invalid_request_error", Some("model_not_found"), Some("model".into())),
                None,
            ),
            Self::TenantRateLimited { retry_after_s, .. } | Self::AdminLocked { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                detail("rate_limit_error", Some("rate_limit_exceeded"), None),
                Some(*retry_after_s),
            ),
            Self::ContextLengthExceeded { param, .. } => {
                (StatusCode::BAD_REQUEST, detail("invalid_request_error", Some("context_length_exceeded"), Some(param.clone())), None)
            }
            Self::RequestOverTokenLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, detail("rate_limit_error", Some("rate_limit_exceeded"), None), None),
            Self::BudgetExceeded { wait } => (
                StatusCode::TOO_MANY_REQUESTS,
                detail("insufficient_quota", Some("budget_exceeded"), None),
                wait.retry_after_s(),
            ),
            Self::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                detail("service_unavailable", Some("limits_store_unavailable"), None),
                Some(1),
            ),
            Self::ShuttingDown | Self::ShutdownCut => {
                (StatusCode::SERVICE_UNAVAILABLE, detail("service_unavailable", Some("shutting_down"), None), Some(1))
            }
            Self::ResponseStoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, detail("service_unavailable", Some("store_unavailable"), None), Some(1)),
            Self::InvalidApiKey { .. } | Self::AdminKeyRequired => {
                (StatusCode::UNAUTHORIZED, detail("invalid_request_error", Some("invalid_api_key"), None), None)
            }
            Self::PolicyViolation { .. } => {
                (StatusCode::FORBIDDEN, detail("invalid_request_error", Some("policy_violation"), None), None)
            }
            Self::ResponseNotFound { .. } => {
                (StatusCode::NOT_FOUND, detail("invalid_request_error", Some("response_not_found"), None), None)
            }
            Self::ItemNotFound { param, .. } => (StatusCode::NOT_FOUND, detail("invalid_request_error", Some("item_not_found"), Some(param.clone())), None),
            Self::ReloadRefused { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, detail("invalid_request_error", Some("reload_refused"), None), None)
            }
            Self::UnknownUrl { .. } => {
                (StatusCode::NOT_FOUND, detail("invalid_request_error", Some("unknown_url"), None), None)
            }
            Self::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, detail("invalid_request_error", Some("method_not_allowed"), None), None)
            }
            Self::Provider(err) => provider_parts(err),
        }
    }

    /// The same error with its `param` (and the message's quoted mentions of it) renamed where
    /// `rename` gives a new name: a request translated from another API names the client's field.
    #[must_use]
    pub fn with_params_renamed(self, rename: impl Fn(&str) -> Option<String>) -> Self {
        let renamed = |message: String, param: Option<String>| match param.as_deref().and_then(&rename) {
            Some(new) => {
                let old = param.unwrap_or_default();
                (message.replace(&format!("'{old}'"), &format!("'{new}'")), Some(new))
            }
            None => (message, param),
        };
        match self {
            Self::InvalidRequest { message, param } => {
                let (message, param) = renamed(message, param);
                Self::InvalidRequest { message, param }
            }
            Self::Provider(ProviderError::InvalidRequest { message, param }) => {
                let (message, param) = renamed(message, param);
                Self::Provider(ProviderError::InvalidRequest { message, param })
            }
            // Named `messages` by the chat path; the client sent another field.
            Self::Provider(ProviderError::ContextLengthExceeded { message }) => match rename("messages") {
                Some(param) => Self::ContextLengthExceeded { message: message.replace("the messages", &format!("the {param}")), param },
                None => Self::Provider(ProviderError::ContextLengthExceeded { message }),
            },
            other => other,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The body as written to the client (also used for SSE `error` events).
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: self.parts().1 }
    }
}

fn provider_parts(err: &ProviderError) -> (StatusCode, ErrorDetail, Option<u64>) {
    let detail = |kind: &str, code: &str, param: Option<String>| ErrorDetail {
        message: err.to_string(),
        kind: kind.to_owned(),
        param,
        code: Some(code.to_owned()),
        innererror: None,
    };
    match err {
        ProviderError::InvalidRequest { message, param } => (
            StatusCode::BAD_REQUEST,
            ErrorDetail { message: message.clone(), kind: "invalid_request_error".into(), param: param.clone(), code: None, innererror: None },
            None,
        ),
        ProviderError::ContextLengthExceeded { .. } => (
            StatusCode::BAD_REQUEST,
            detail("invalid_request_error", "context_length_exceeded", Some("messages".into())),
            None,
        ),
        ProviderError::Overloaded { retry_after_s, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, detail("rate_limit_error", "engine_overloaded", None), Some(*retry_after_s))
        }
        // The provider's own error when it sent one (which limit, a spent quota); its wait only
        // when it gave one.
        ProviderError::RateLimited { retry_after_s, body, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            body.as_ref().map_or_else(|| detail("rate_limit_error", "rate_limit_exceeded", None), |b| b.error.clone()),
            *retry_after_s,
        ),
        ProviderError::Rejected { status, body, .. } => {
            (StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST), body.error.clone(), None)
        }
        ProviderError::Upstream { .. } => (StatusCode::BAD_GATEWAY, detail("api_error", "upstream_error", None), None),
        ProviderError::Timeout { .. } => {
            (StatusCode::GATEWAY_TIMEOUT, detail("api_error", "upstream_timeout", None), None)
        }
        ProviderError::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, detail("api_error", "engine_unavailable", None), Some(1))
        }
        ProviderError::CircuitOpen { retry_after_s, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, detail("api_error", "upstream_unavailable", None), Some(*retry_after_s))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, retry_after) = self.parts();
        if status.is_server_error() {
            // A provider's message may quote the prompt: logged with its PII masked.
            tracing::error!(status = status.as_u16(), error = %crate::privacy::masked(&self), "request failed");
        } else {
            // Not the message: a refusal may quote the request's own values (an invalid field, a
            // provider's 4xx about the prompt), and request values are never logged.
            tracing::debug!(status = status.as_u16(), kind = %error.kind, code = ?error.code, param = ?error.param, "request refused");
        }
        if let Self::PolicyViolation { reason } = &self {
            // Made of configured names (rule, target, tenant, regions, models) and privacy tags,
            // never request text: why a 403 happened, for the operator (escaped as Debug).
            tracing::info!(reason = ?reason, "request refused by the privacy, residency or models guard");
        }
        let mut response = (status, axum::Json(ErrorBody { error })).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_overload_is_429_with_retry_after() {
        let r = ApiError::from(ProviderError::Overloaded { message: "busy".into(), retry_after_s: 2 }).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(ApiError::from(ProviderError::Overloaded { message: "x".into(), retry_after_s: 1 }).body().error.code.as_deref(), Some("engine_overloaded"));
    }

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        let e = ApiError::from(ProviderError::Upstream { provider: "p".into(), status: Some(500), message: "x".into() });
        assert_eq!(e.into_response().status(), StatusCode::BAD_GATEWAY);
        let e = ApiError::from(ProviderError::Timeout { provider: "p".into(), timeout_ms: 5 });
        assert_eq!(e.body().error.code.as_deref(), Some("upstream_timeout"));
    }

    #[test]
    fn model_not_found_names_param_model() {
        let body = ApiError::ModelNotFound { model: "nope".into() }.body();
        assert_eq!(body.error.code.as_deref(), Some("model_not_found"));
        assert_eq!(body.error.param.as_deref(), Some("model"));
        assert!(body.error.message.contains("nope"));
    }
}
