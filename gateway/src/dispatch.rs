//! From a parsed request to a routing decision, and from a target to the provider serving it.

use std::sync::Arc;

use axum::http::HeaderMap;
use providers::wire::ChatRequest;
use providers::{Provider, ProviderError};
use router::{Decision, RouteInput, Router, TenantProfile};

use crate::catalog::{Catalog, ModelChoice};
use crate::privacy;
use crate::error::ApiError;
use crate::spill::Spillover;
use crate::state::AppState;

/// Header carrying the caller's privacy tags.
pub const TAGS_HEADER: &str = "x-switchyard-tags";

/// The caller's privacy tags: comma-separated, trimmed, lower-cased, deduplicated. A value with
/// bytes beyond visible ASCII is read as UTF-8 (lossily) rather than dropped: one odd tag must
/// not make the others, `confidential` among them, go unseen.
pub fn caller_tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = headers
        .get_all(TAGS_HEADER)
        .iter()
        .flat_map(|v| String::from_utf8_lossy(v.as_bytes()).split(',').map(|t| t.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}').to_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Decides where `req` from `tenant` goes. Unknown models are 404 `model_not_found`; a request
/// the guard forbids comes back with `violation` set (the caller answers 403).
/// `budget_exhausted`: the tenant's budget could not hold the request and its `on_exceed` is
/// `local` (the router keeps it on the local engine where the guard allows).
pub fn plan(state: &AppState, req: &ChatRequest, headers: &HeaderMap, tenant: &TenantProfile, budget_exhausted: bool) -> Result<Decision, ApiError> {
    let budget = BudgetSignal { used: state.limiter.used_share(&tenant.name), exhausted: budget_exhausted };
    let unavailable = state.open_circuits();
    let live = state.live.load();
    let local_weight = live.local_weight(&tenant.name);
    let signals = Signals { unavailable: &unavailable, budget, spillover: state.spillover(&live), local_weight };
    plan_with(&live.router, &state.catalog, req, headers, tenant, &signals)
}

/// The tenant's budget as the router sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetSignal {
    /// Share of the tightest budget spent or reserved.
    pub used: f64,
    /// The budget cannot hold this request (`on_exceed = "local"`).
    pub exhausted: bool,
}

/// What the router is told about the gateway's state beyond the request.
#[derive(Debug, Default)]
pub struct Signals<'a> {
    /// Targets whose circuit is open.
    pub unavailable: &'a [String],
    /// The tenant's budget.
    pub budget: BudgetSignal,
    /// The local engine's latency targets, when spillover is on.
    pub spillover: Option<&'a Spillover>,
    /// The tenant's `local_weight` (its share of the local engine; 0 reads as 1).
    pub local_weight: u32,
}

/// The size in tokens the router reads a conversation's text at: the accounting estimate (about
/// four characters a token, rounded up), good enough for routing; usage reports exact counts.
pub fn routing_tokens(text: &str) -> u32 {
    u32::try_from(crate::accounting::estimate_tokens(text.chars().count())).unwrap_or(u32::MAX)
}

/// [`plan`] without a running gateway (for `switchyard explain`).
pub fn plan_with(
    router: &Router,
    catalog: &Catalog,
    req: &ChatRequest,
    headers: &HeaderMap,
    tenant: &TenantProfile,
    signals: &Signals<'_>,
) -> Result<Decision, ApiError> {
    let Signals { unavailable, budget, spillover, local_weight } = *signals;
    // A model no target serves (or several serve, by a bare name) may still be claimed by a rule's
    // `when.requested_model`, as clients hard-coding `gpt-4o` need; unclaimed, it is a 404.
    let choice = catalog.resolve(&req.model);
    let resolved = match &choice {
        Some(ModelChoice::Target(t)) => Some(t.as_str()),
        Some(ModelChoice::Auto) | None => None,
    };
    let seen = privacy::without_holding_others(privacy::scanned_bytes(req), || privacy::inspect(req));
    let mut tags = caller_tags(headers);
    tags.extend(tenant.tags.iter().cloned());
    let prompt_tokens = routing_tokens(&seen.text);
    let input = RouteInput {
        requested_model: &req.model,
        resolved_model: resolved,
        tenant: &tenant.name,
        residency: &tenant.residency,
        models: &tenant.models,
        tags,
        pii: seen.pii,
        text: &seen.text,
        turns: req.messages.len(),
        prompt_tokens,
        has_tools: req.tools.is_some(),
        unavailable,
        budget_used: budget.used,
        budget_exhausted: budget.exhausted,
        // The engine's view of the tenant, as the handler set it on the request (else built here).
        local_overload: spillover.and_then(|s| match &req.tenant {
            Some(engine_tenant) => s.check(prompt_tokens, engine_tenant),
            None => s.check(prompt_tokens, &local_engine::Tenant { name: std::sync::Arc::from(tenant.name.as_str()), weight: local_weight.max(1) }),
        }),
        stream: req.is_stream(),
    };
    let decision = {
        let _span = tracing::debug_span!("route.decide").entered();
        router.decide(&input)
    };
    let claimed = || router.policy().rules.iter().any(|r| r.name == decision.rule && r.when.requested_model.is_some());
    if choice.is_none() && !claimed() {
        return Err(ApiError::ModelNotFound { model: req.model.clone() });
    }
    Ok(decision)
}

/// The provider for `target` and the model name to send it.
pub fn provider_for(state: &AppState, target: &str) -> Result<(Arc<dyn Provider>, String), ProviderError> {
    let unavailable = || ProviderError::Unavailable { message: format!("target {target:?} is not configured") };
    if Some(target) == state.catalog.local_target().as_deref() {
        let local = state.local.as_ref().ok_or_else(unavailable)?;
        return Ok((Arc::new(local.clone()), local.engine().config().name.clone()));
    }
    let (provider, model) = target.split_once('/').ok_or_else(unavailable)?;
    let remote = state.remotes.get(provider).ok_or_else(unavailable)?;
    Ok((Arc::clone(&remote.provider) as Arc<dyn Provider>, model.to_owned()))
}

/// True for failures where trying the next fallback target can help: the target failed, or it
/// cannot take this request (a field its API has no way to carry, a prompt longer than the local
/// engine's context) and another may. Not an upstream's own 4xx (`Rejected`): that is the
/// request's doing, and would be again elsewhere.
pub fn worth_falling_back(err: &ProviderError) -> bool {
    match err {
        ProviderError::Upstream { .. }
        | ProviderError::Timeout { .. }
        | ProviderError::RateLimited { .. }
        | ProviderError::Unavailable { .. }
        | ProviderError::CircuitOpen { .. }
        | ProviderError::Overloaded { .. }
        | ProviderError::InvalidRequest { .. }
        | ProviderError::ContextLengthExceeded { .. } => true,
        ProviderError::Rejected { .. } => false,
    }
}

/// `switchyard_upstream_errors_total{provider, kind}` for a target that failed the request (after
/// its provider's own retries). A request refused before it reached the target (a field the
/// provider's API cannot carry) is not the target's failure and is not counted.
pub fn count_upstream_error(state: &AppState, target: &str, err: &ProviderError) {
    if !matches!(err, ProviderError::InvalidRequest { .. }) {
        state.ledger.upstream_failed(target, error_kind(err));
    }
}

/// The `kind` label of an upstream failure.
pub fn error_kind(err: &ProviderError) -> &'static str {
    match err {
        ProviderError::InvalidRequest { .. } => "invalid_request",
        ProviderError::ContextLengthExceeded { .. } => "context_length",
        ProviderError::Overloaded { .. } => "overloaded",
        ProviderError::RateLimited { .. } => "rate_limited",
        ProviderError::Rejected { .. } => "rejected",
        ProviderError::Upstream { .. } => "upstream",
        ProviderError::Timeout { .. } => "timeout",
        ProviderError::Unavailable { .. } | ProviderError::CircuitOpen { .. } => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn every_tag_of_a_header_with_non_ascii_bytes_counts() {
        let mut headers = HeaderMap::new();
        headers.append(TAGS_HEADER, HeaderValue::from_bytes("Confidential, café".as_bytes()).unwrap());
        headers.append(TAGS_HEADER, HeaderValue::from_bytes(b"hr,\xff").unwrap());
        assert_eq!(caller_tags(&headers), ["café", "confidential", "hr", "\u{fffd}"]);
    }
}
