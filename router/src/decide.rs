use std::collections::BTreeMap;

use wildmatch::WildMatch;

use crate::complexity::{BaselineScorer, ComplexityScore, ComplexityScorer};
use crate::guard::{violation, Topology};
use crate::signals::{features, Features};
use crate::{Hardness, OnViolation, Policy, Rule};

/// Everything the router knows about one request. Built by the gateway; no I/O here.
#[derive(Debug, Clone, Default)]
pub struct RouteInput<'a> {
    /// `model` as sent.
    pub requested_model: &'a str,
    /// The resolved `provider/model` for an explicit model, if it resolved.
    pub resolved_model: Option<&'a str>,
    /// The tenant's configured name.
    pub tenant: &'a str,
    /// The tenant's allowed regions (empty: anywhere).
    pub residency: &'a [String],
    /// The targets the tenant may use ([`crate::model_allowed`]; empty: any).
    pub models: &'a [String],
    /// Privacy tags: the caller's `x-switchyard-tags` and the tenant's `tags`.
    pub tags: Vec<String>,
    /// PII kinds found and their counts (never the values); `unscannable` for content that
    /// could not be scanned.
    pub pii: BTreeMap<String, u32>,
    /// The conversation's text, for classification.
    pub text: &'a str,
    /// Number of messages.
    pub turns: usize,
    /// Prompt tokens, estimated.
    pub prompt_tokens: u32,
    /// The request defines tools.
    pub has_tools: bool,
    /// Targets that fail fast now (their provider's circuit is open): skipped when another
    /// allowed target is left.
    pub unavailable: &'a [String],
    /// Share of the tenant's tightest budget already spent or reserved (0 without a budget; may
    /// pass 1): `when.budget_used_over` compares against it.
    pub budget_used: f64,
    /// The tenant's budget cannot cover this request and its `on_exceed` is `local`: remote
    /// targets are dropped and the request goes to the local engine where the guard allows it.
    pub budget_exhausted: bool,
    /// The local engine cannot meet its latency targets for this request now: a rule with
    /// `spill` sends it there if it may leave.
    pub local_overload: Option<LocalOverload>,
    /// The client asked for a stream: a cascade, which needs the whole local answer, is skipped.
    pub stream: bool,
}

/// Why the local engine would miss its latency targets (bounded: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillReason {
    /// Predicted time to first token above `[local] slo_ttft_ms`.
    Ttft,
    /// Predicted per-stream decode rate below `[local] slo_decode_tok_s`.
    DecodeRate,
    /// More requests waiting than `[local] spill_queue_depth` (the simple rule).
    Queue,
}

impl SpillReason {
    /// `ttft`, `decode_rate` or `queue`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ttft => "ttft",
            Self::DecodeRate => "decode_rate",
            Self::Queue => "queue",
        }
    }
}

/// The local engine's overload, as the gateway measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOverload {
    /// Which target is missed.
    pub reason: SpillReason,
    /// The figures behind it, for `reasons` (e.g. "predicted TTFT 1200 ms > SLO 800 ms").
    pub detail: String,
}

/// Local engine or a remote provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The embedded engine.
    Local,
    /// Anything else.
    Remote,
}

impl Tier {
    /// `local` or `remote`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// Privacy signals of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacySummary {
    /// All privacy tags, sorted and deduplicated (`pii` included when PII was found).
    pub tags: Vec<String>,
    /// PII kinds and counts.
    pub pii: BTreeMap<String, u32>,
}

impl PrivacySummary {
    /// The caller's and tenant's tags, plus `pii` when PII was found.
    fn of(input: &RouteInput<'_>) -> Self {
        let mut tags: Vec<String> = input.tags.clone();
        if !input.pii.is_empty() {
            tags.push("pii".to_owned());
        }
        tags.sort();
        tags.dedup();
        Self { tags, pii: input.pii.clone() }
    }
}

/// The router's answer: where a request goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Local or remote.
    pub tier: Tier,
    /// `provider/model` or `local/<name>`.
    pub target: String,
    /// The matching rule's name; `explicit` when the client named a model no rule matched.
    pub rule: String,
    /// Complexity in [0, 1].
    pub complexity: f64,
    /// Complexity at or above the threshold.
    pub hard: bool,
    /// Features of the text.
    pub features: Features,
    /// Privacy signals.
    pub privacy: PrivacySummary,
    /// PII is replaced by placeholders before the request leaves for a remote target.
    pub redact: bool,
    /// Targets to try next, in order (only targets the privacy and residency guard allows).
    pub fallbacks: Vec<String>,
    /// What led to the decision.
    pub reasons: Vec<String>,
    /// The guard moved the request away from the target its rule (or model) named.
    pub rerouted: bool,
    /// The rule's `spill` target took the request off the overloaded local engine.
    pub spilled: Option<SpillReason>,
    /// The target the rule (or model) named, when its circuit is open now and `target` stands
    /// in for it.
    pub stands_in_for: Option<String>,
    /// `strategy = "cascade"`: the local engine answers first; the gateway keeps its answer
    /// when its mean token log-probability is at least this (`[classifier] cascade_min_logprob`),
    /// else goes on to `target`. Only set when the target is remote and the guard allows the
    /// local engine.
    pub cascade: Option<f64>,
    /// Set when the request may not be served at all (`on_violation = "reject"`, or no allowed
    /// target is left): the gateway answers 403 `policy_violation` with this reason.
    pub violation: Option<String>,
}

/// The rule name used when the client named a model and no rule matched it.
pub const EXPLICIT_RULE: &str = "explicit";

/// A policy, the targets it may use and a complexity scorer: everything needed to decide.
#[derive(Debug)]
pub struct Router {
    policy: Policy,
    topology: Topology,
    scorer: Box<dyn ComplexityScorer>,
}

/// A score is a sum of float terms: to a billionth (far finer than any threshold) it is shown
/// without their noise (0.0002, not 0.00019999999999999998), and compared as shown.
fn without_float_noise(mut complexity: ComplexityScore) -> ComplexityScore {
    complexity.score = (complexity.score * 1e9).round() / 1e9;
    complexity
}

impl Router {
    /// A router with the baseline complexity scorer.
    pub fn new(policy: Policy, topology: Topology) -> Self {
        Self { policy, topology, scorer: Box::new(BaselineScorer) }
    }

    /// Replaces the complexity scorer.
    #[must_use]
    pub fn with_scorer(mut self, scorer: Box<dyn ComplexityScorer>) -> Self {
        self.scorer = scorer;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The targets.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Decides where a request goes. `auto` requests go through the rules without
    /// `when.requested_model`; explicit models are served as asked unless a rule with a matching
    /// `when.requested_model` takes them. Whatever the rules say, the privacy and residency guard
    /// has the last word (INTERFACE.md §4).
    pub fn decide(&self, input: &RouteInput<'_>) -> Decision {
        let policy = &self.policy;
        let features = features(input.text, input.turns, input.has_tools);
        let complexity = without_float_noise(self.scorer.score(input.text, &features, input.prompt_tokens));
        let hard = complexity.score >= policy.classifier.complexity_threshold;
        let privacy = PrivacySummary::of(input);
        let is_auto = input.requested_model == "auto";
        let matched = policy.rules.iter().find(|r| rule_matches(r, input, is_auto, hard, &privacy.tags));
        // Four decimals, as the complexity header has: at two, 0.5477 read "0.55 < threshold 0.55".
        let mut reasons = vec![format!(
            "complexity {:.4} {} threshold {}",
            complexity.score,
            if hard { ">=" } else { "<" },
            policy.classifier.complexity_threshold
        )];
        reasons.extend(complexity.reasons);
        if !privacy.tags.is_empty() {
            reasons.push(format!("privacy tags: {}", privacy.tags.join(", ")));
        }
        if !privacy.pii.is_empty() {
            let kinds: Vec<String> = privacy.pii.iter().map(|(k, n)| format!("{k}×{n}")).collect();
            reasons.push(format!("PII found: {}", kinds.join(", ")));
        }
        let spill = matched.and_then(|r| r.spill.as_ref()).map(|s| s.get_ref().as_str());
        let cascade = matched.and_then(|r| r.strategy) == Some(crate::Strategy::Cascade);
        let (rule, target, fallbacks, redact, on_violation) = if let Some(rule) = matched {
            reasons.push(format!("matched rule {:?}{}", rule.name, describe_when(rule)));
            // Aliases expand in place (`frontier` to several models); a target listed twice is tried once.
            let mut chain: Vec<String> = Vec::new();
            for t in rule.targets().flat_map(|(_, t)| self.topology.expand(t.get_ref())) {
                if !chain.contains(&t) {
                    chain.push(t);
                }
            }
            let target = if chain.is_empty() { rule.route.get_ref().clone() } else { chain.remove(0) };
            (rule.name.clone(), target, chain, rule.redact, rule.on_violation.unwrap_or(policy.on_violation))
        } else {
            let target = input.resolved_model.unwrap_or(input.requested_model).to_owned();
            reasons.push(format!("explicit model {target:?} served as asked"));
            (EXPLICIT_RULE.to_owned(), target, Vec::new(), false, policy.on_violation)
        };
        // Redaction cannot cover content that was not scanned (images, files): fail closed.
        let unscannable = input.pii.contains_key(crate::PiiKind::Unscannable.as_str());
        // Redaction lifts the scanner's `pii` tag only: a tag from the caller or the tenant (even
        // `pii`: "all of this is personal data") marks the whole text.
        let redaction = crate::Redacts::of(redact, unscannable, !input.tags.is_empty());
        let redacts = redaction == crate::Redacts::Yes;
        let privacy_tagged = !privacy.tags.is_empty();
        let check = |t: &str| {
            violation(&self.topology, t, input.residency, privacy_tagged, redaction)
                .or_else(|| crate::model_violation(input.models, input.tenant, t))
        };
        let mut allowed_fallbacks = Vec::new();
        for fallback in fallbacks {
            if unscannable && self.topology.local_target() == Some(fallback.as_str()) {
                reasons.push(format!("fallback dropped: {fallback:?} reads text only, not this request's media"));
                continue;
            }
            match check(&fallback) {
                None => allowed_fallbacks.push(fallback),
                Some(why) => reasons.push(format!("fallback dropped: {why}")),
            }
        }
        let mut decision = Decision {
            tier: Tier::Local,
            target,
            rule,
            complexity: complexity.score,
            hard,
            features,
            privacy,
            redact,
            fallbacks: allowed_fallbacks,
            reasons,
            rerouted: false,
            spilled: None,
            stands_in_for: None,
            cascade: None,
            violation: None,
        };
        if let Some(why) = check(&decision.target) {
            self.on_violation(&mut decision, on_violation, why, unscannable, &check);
        }
        if decision.violation.is_none() && !input.unavailable.is_empty() {
            skip_unavailable(&mut decision, input.unavailable);
        }
        if decision.violation.is_none() && input.budget_exhausted {
            self.keep_local(&mut decision, unscannable, &check);
        }
        if let (Some(spill), Some(overload), None) = (spill, &input.local_overload, &decision.violation) {
            self.spill(&mut decision, spill, overload, input, privacy_tagged && !redacts, &check);
        }
        decision.tier = self.topology.get(&decision.target).map_or(Tier::Remote, |i| i.tier);
        if cascade {
            self.cascade(&mut decision, input, &check);
        }
        decision
    }
}

impl Router {
    /// The guard forbids the decision's target (`why`): refuse, or move it to the first allowed
    /// fallback, else the local engine — which reads text only, so a request with an image, a
    /// file or audio (`unscannable` parts) cannot be served there instead.
    fn on_violation(&self, decision: &mut Decision, on_violation: OnViolation, why: String, unscannable: bool, check: &dyn Fn(&str) -> Option<String>) {
        if on_violation == OnViolation::Reject {
            decision.reasons.push(format!("rejected: {why}"));
            decision.violation = Some(why);
            return;
        }
        let local = self.topology.local_target().filter(|l| !unscannable && check(l).is_none()).map(str::to_owned);
        let next = if decision.fallbacks.is_empty() { local } else { Some(decision.fallbacks.remove(0)) };
        if let Some(next) = next {
            decision.reasons.push(format!("rerouted to {next:?}: {why}"));
            decision.target = next;
            decision.rerouted = true;
        } else {
            let why = if unscannable && self.topology.local_target().is_some() {
                format!("{why}; the local engine cannot take it instead (it reads text only)")
            } else {
                why
            };
            decision.reasons.push(format!("rejected, no allowed target left: {why}"));
            decision.violation = Some(why);
        }
    }

    /// Budget exhausted: only the local engine may serve. Remote fallbacks are dropped; a remote
    /// target is replaced by the local engine when the guard allows it (else it stays, and the
    /// gateway refuses the request with `budget_exceeded`).
    fn keep_local(&self, decision: &mut Decision, unscannable: bool, check: &dyn Fn(&str) -> Option<String>) {
        let Some(local) = self.topology.local_target() else {
            decision.reasons.push("budget exhausted; no local engine to serve instead".to_owned());
            return;
        };
        decision.fallbacks.retain(|t| t == local);
        if decision.target == local {
            return;
        }
        if unscannable {
            decision.reasons.push("budget exhausted; the local engine reads text only, not this request's media".to_owned());
            return;
        }
        match check(local) {
            None => {
                decision.reasons.push(format!("rerouted to {local:?}: the tenant's budget is exhausted"));
                local.clone_into(&mut decision.target);
                decision.fallbacks.clear();
                decision.rerouted = true;
            }
            Some(why) => decision.reasons.push(format!("budget exhausted; local engine not allowed: {why}")),
        }
    }
}

impl Router {
    /// `strategy = "cascade"`: the local engine answers first when the route is remote, the
    /// request may be served locally and the budget is not exhausted.
    fn cascade(&self, decision: &mut Decision, input: &RouteInput<'_>, check: &dyn Fn(&str) -> Option<String>) {
        if decision.violation.is_some() || decision.tier != Tier::Remote || input.budget_exhausted {
            return;
        }
        if input.stream {
            decision.reasons.push("cascade skipped: a streamed request goes straight to the route".to_owned());
            return;
        }
        if input.pii.contains_key(crate::PiiKind::Unscannable.as_str()) {
            decision.reasons.push("cascade skipped: the local engine reads text only, not this request's media".to_owned());
            return;
        }
        // An overloaded engine would make the request wait behind its queue for an answer it may
        // then throw away: the route serves it at once, as spillover would.
        if let Some(overload) = &input.local_overload {
            decision.reasons.push(format!("cascade skipped: local engine overloaded ({})", overload.detail));
            return;
        }
        let threshold = self.policy.classifier.cascade_min_logprob;
        match self.topology.local_target().map(check) {
            Some(None) => {
                decision.cascade = Some(threshold);
                decision.reasons.push(format!(
                    "cascade: the local engine answers first; kept if its mean token log-probability is at least {threshold}"
                ));
            }
            Some(Some(why)) => decision.reasons.push(format!("cascade skipped: local engine not allowed: {why}")),
            None => decision.reasons.push("cascade skipped: no local engine".to_owned()),
        }
    }

    /// The local engine is overloaded: a request its rule serves locally goes to the rule's
    /// `spill` target (then local, then the rule's fallbacks) if it may leave — no privacy tag
    /// without redaction, the guard allows the target, the budget is not exhausted, the target's
    /// circuit is closed. Otherwise it stays and waits in the engine's queue.
    fn spill(
        &self,
        decision: &mut Decision,
        spill: &str,
        overload: &LocalOverload,
        input: &RouteInput<'_>,
        tagged_unredacted: bool,
        check: &dyn Fn(&str) -> Option<String>,
    ) {
        let Some(local) = self.topology.local_target() else { return };
        if decision.target != local {
            return;
        }
        let stay = |decision: &mut Decision, why: &str| {
            decision.reasons.push(format!("local engine overloaded ({}); not spilled: {why}", overload.detail));
        };
        if tagged_unredacted {
            return stay(decision, "privacy-tagged requests stay local unless the rule redacts");
        }
        if input.budget_exhausted {
            return stay(decision, "the tenant's budget is exhausted");
        }
        let mut refusals = Vec::new();
        let allowed = self.topology.expand(spill).into_iter().find(|t| {
            let why = if input.unavailable.contains(t) { Some(format!("target {t:?}: circuit open")) } else { check(t) };
            why.map(|w| refusals.push(w)).is_none()
        });
        let Some(target) = allowed else {
            return stay(decision, &refusals.join("; "));
        };
        decision.reasons.push(format!("spilled to {target:?}: local engine overloaded ({})", overload.detail));
        let previous = std::mem::replace(&mut decision.target, target);
        decision.fallbacks.retain(|t| *t != previous && *t != decision.target);
        decision.fallbacks.insert(0, previous);
        decision.spilled = Some(overload.reason);
    }
}

/// Moves past targets whose circuit is open, as long as an available one is left (when none is,
/// the decision stands and the breaker's probe decides).
fn skip_unavailable(decision: &mut Decision, unavailable: &[String]) {
    let is_open = |t: &String| unavailable.contains(t);
    if !is_open(&decision.target) && !decision.fallbacks.iter().any(is_open) {
        return;
    }
    let mut chain: Vec<String> = std::iter::once(decision.target.clone()).chain(decision.fallbacks.drain(..)).collect();
    let skipped: Vec<String> = chain.iter().filter(|t| is_open(t)).cloned().collect();
    if skipped.len() == chain.len() {
        decision.fallbacks = chain.split_off(1);
        return;
    }
    chain.retain(|t| !is_open(t));
    for t in &skipped {
        decision.reasons.push(format!("skipped {t:?}: circuit open"));
    }
    let replacement = chain.remove(0);
    let replaced = std::mem::replace(&mut decision.target, replacement);
    decision.stands_in_for = is_open(&replaced).then_some(replaced);
    decision.fallbacks = chain;
}

/// ` (when …)` for a rule with conditions, naming the conditions that held.
fn describe_when(rule: &Rule) -> String {
    let w = &rule.when;
    let mut parts = Vec::new();
    if !w.privacy.is_empty() {
        parts.push(format!("privacy any of [{}]", w.privacy.join(", ")));
    }
    if let Some(c) = w.complexity {
        parts.push(format!("complexity {}", if c == Hardness::Hard { "hard" } else { "easy" }));
    }
    if !w.tenant.is_empty() {
        parts.push(format!("tenant in [{}]", w.tenant.join(", ")));
    }
    if let Some(m) = &w.requested_model {
        parts.push(format!("requested model matches {m:?}"));
    }
    if let Some(n) = w.min_prompt_tokens {
        parts.push(format!("prompt >= {n} tokens"));
    }
    if let Some(share) = w.budget_used_over {
        parts.push(format!("budget used > {:.0}%", share * 100.0));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (when {})", parts.join(", "))
    }
}

fn rule_matches(rule: &Rule, input: &RouteInput<'_>, is_auto: bool, hard: bool, tags: &[String]) -> bool {
    let w = &rule.when;
    let model_ok = match &w.requested_model {
        None => is_auto,
        Some(glob) => {
            let glob = WildMatch::new(glob);
            glob.matches(input.requested_model) || input.resolved_model.is_some_and(|m| glob.matches(m))
        }
    };
    model_ok
        && w.privacy_holds(tags)
        && w.complexity.is_none_or(|c| (c == Hardness::Hard) == hard)
        && (w.tenant.is_empty() || w.tenant.iter().any(|t| t == input.tenant))
        && w.min_prompt_tokens.is_none_or(|n| input.prompt_tokens >= n)
        && w.budget_used_over.is_none_or(|share| input.budget_used > share)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[classifier]
complexity_threshold = 0.5

[[rule]]
name = "private-stays-home"
when.privacy = ["pii", "confidential"]
route = "local"

[[rule]]
name = "gpt4-requests"
when.requested_model = "gpt-4*"
route = "openai/gpt-4o-mini"

[[rule]]
name = "acme-long"
when.tenant = ["acme"]
when.min_prompt_tokens = 1000
route = "openai/gpt-4o"

[[rule]]
name = "hard-escalates"
when.complexity = "hard"
route = "openai/gpt-4o"
fallback = ["local"]
redact = true

[[rule]]
name = "default"
route = "local"
"#;

    fn input<'a>(model: &'a str, text: &'a str) -> RouteInput<'a> {
        RouteInput { requested_model: model, tenant: "default", text, turns: 1, prompt_tokens: 10, ..RouteInput::default() }
    }

    fn topology() -> Topology {
        Topology::new()
            .with_local("local/local-small", "eu-west")
            .with_remote("openai/gpt-4o", Some("us-east"), false)
            .with_remote("openai/gpt-4o-mini", Some("us-east"), false)
            .with_remote("anthropic/claude-sonnet", Some("eu-central"), true)
    }

    fn policy() -> Router {
        Router::new(Policy::parse(POLICY).unwrap(), topology())
    }

    fn decide(router: &Router, input: &RouteInput<'_>) -> Decision {
        router.decide(input)
    }

    const HARD_TEXT: &str = "Prove step by step that the algorithm's complexity is optimal; derive x^2 = y = z.";

    #[test]
    fn complexity_is_shown_without_float_noise() {
        let router = policy();
        for text in ["Hi", HARD_TEXT, "Summarise this: the quick brown fox jumps over the lazy dog, twice.", &"why? ".repeat(300)] {
            let shown = decide(&router, &input("auto", text)).complexity.to_string();
            assert!(shown.len() <= 11, "{shown} for {text:?}");
        }
    }

    #[test]
    fn easy_auto_request_falls_through_to_default_local() {
        let d = decide(&policy(), &input("auto", "Hi"));
        assert_eq!(d.rule, "default");
        assert_eq!(d.target, "local/local-small");
        assert_eq!(d.tier, Tier::Local);
        assert!(!d.hard);
    }

    #[test]
    fn hard_auto_request_escalates_with_expanded_fallback() {
        let d = decide(&policy(), &input("auto", HARD_TEXT));
        assert!(d.hard, "{d:?}");
        assert_eq!(d.rule, "hard-escalates");
        assert_eq!(d.target, "openai/gpt-4o");
        assert_eq!(d.tier, Tier::Remote);
        assert_eq!(d.fallbacks, vec!["local/local-small".to_owned()]);
        assert!(d.redact);
    }

    const BUDGET_POLICY: &str = r#"
[[rule]]
name = "money-runs-low"
when.budget_used_over = 0.8
route = "local"

[[rule]]
name = "everything-remote"
route = "openai/gpt-4o"
fallback = ["anthropic/claude-sonnet", "local"]
"#;

    #[test]
    fn budget_used_over_holds_only_above_the_share() {
        let router = Router::new(Policy::parse(BUDGET_POLICY).unwrap(), topology());
        for (used, rule) in [(0.0, "everything-remote"), (0.8, "everything-remote"), (0.81, "money-runs-low"), (3.0, "money-runs-low")] {
            let mut i = input("auto", "Hi");
            i.budget_used = used;
            let d = decide(&router, &i);
            assert_eq!(d.rule, rule, "budget used {used}");
        }
        let d = decide(&router, &RouteInput { budget_used: 0.9, ..input("auto", "Hi") });
        assert!(d.reasons.iter().any(|r| r.contains("budget used > 80%")), "{:?}", d.reasons);
    }

    #[test]
    fn exhausted_budget_keeps_the_request_local_and_drops_remote_fallbacks() {
        let router = Router::new(Policy::parse(BUDGET_POLICY).unwrap(), topology());
        let d = decide(&router, &RouteInput { budget_exhausted: true, ..input("auto", "Hi") });
        assert_eq!((d.target.as_str(), d.tier, d.rerouted), ("local/local-small", Tier::Local, true));
        assert!(d.fallbacks.is_empty());
        assert!(d.violation.is_none());
    }

    #[test]
    fn exhausted_budget_does_not_send_media_to_the_text_only_engine() {
        let router = Router::new(Policy::parse(BUDGET_POLICY).unwrap(), topology());
        let mut i = RouteInput { budget_exhausted: true, ..input("auto", "Hi") };
        i.pii.insert("unscannable".into(), 1);
        let d = decide(&router, &i);
        // (The guard moved it from the untrusted route to the trusted one; the budget keeps it
        // off the local engine, so the gateway refuses it with budget_exceeded.)
        assert_eq!((d.tier, d.target.as_str()), (Tier::Remote, "anthropic/claude-sonnet"), "{d:?}");
        assert!(d.fallbacks.is_empty(), "{d:?}");
        assert!(d.reasons.iter().any(|r| r.contains("budget exhausted; the local engine reads text only")), "{:?}", d.reasons);
    }

    #[test]
    fn exhausted_budget_does_not_override_residency() {
        // The local engine runs in eu-west; a tenant held to us-* may not use it, so the
        // remote target stays (the gateway then refuses with budget_exceeded).
        let router = Router::new(Policy::parse(BUDGET_POLICY).unwrap(), topology());
        let residency = vec!["us".to_owned()];
        let d = decide(&router, &RouteInput { budget_exhausted: true, residency: &residency, ..input("auto", "Hi") });
        assert_eq!(d.tier, Tier::Remote);
        assert!(!d.rerouted);
        assert!(d.reasons.iter().any(|r| r.contains("local engine not allowed")), "{:?}", d.reasons);
    }

    #[test]
    fn a_negative_budget_share_is_a_policy_problem() {
        let text = BUDGET_POLICY.replace("0.8", "-1");
        let problems = Policy::parse(&text).unwrap().problems(&text, &|_| true);
        assert!(problems.iter().any(|p| p.message.contains("budget_used_over")), "{problems:?}");
    }

    #[test]
    fn privacy_tag_keeps_a_hard_request_local() {
        let mut i = input("auto", HARD_TEXT);
        i.tags = vec!["confidential".into()];
        let d = decide(&policy(), &i);
        assert_eq!(d.rule, "private-stays-home");
        assert_eq!(d.privacy.tags, vec!["confidential".to_owned()]);
    }

    #[test]
    fn found_pii_adds_the_pii_tag() {
        let mut i = input("auto", "Hi");
        i.pii.insert("email".into(), 2);
        let d = decide(&policy(), &i);
        assert_eq!(d.rule, "private-stays-home");
        assert_eq!(d.privacy.tags, vec!["pii".to_owned()]);
        assert_eq!(d.privacy.pii.get("email"), Some(&2));
    }

    #[test]
    fn explicit_model_is_served_as_asked_when_no_rule_names_it() {
        let mut i = input("claude-sonnet", HARD_TEXT);
        i.resolved_model = Some("anthropic/claude-sonnet");
        let d = decide(&policy(), &i);
        assert_eq!(d.rule, EXPLICIT_RULE);
        assert_eq!(d.target, "anthropic/claude-sonnet");
    }

    #[test]
    fn requested_model_glob_matches_model_as_sent_or_resolved() {
        let d = decide(&policy(), &input("gpt-4-turbo", "Hi"));
        assert_eq!(d.rule, "gpt4-requests");
        let mut i = input("mini", "Hi");
        i.resolved_model = Some("openai/gpt-4o");
        assert_eq!(decide(&policy(), &i).rule, EXPLICIT_RULE);
    }

    #[test]
    fn tenant_and_min_prompt_tokens_must_both_hold() {
        let mut i = input("auto", "Hi");
        i.tenant = "acme";
        i.prompt_tokens = 999;
        assert_eq!(decide(&policy(), &i).rule, "default");
        i.prompt_tokens = 1000;
        assert_eq!(decide(&policy(), &i).rule, "acme-long");
    }

    const ESCALATE_ALL: &str = r#"
on_violation = "reroute"
[[rule]]
name = "reject-gpt4"
when.requested_model = "gpt-4o"
route = "openai/gpt-4o"
on_violation = "reject"

[[rule]]
name = "redacting-escalation"
when.complexity = "hard"
route = "openai/gpt-4o"
fallback = ["anthropic/claude-sonnet", "local"]
redact = true

[[rule]]
name = "default"
route = "openai/gpt-4o-mini"
fallback = ["local"]
"#;

    fn escalate_all() -> Router {
        Router::new(Policy::parse(ESCALATE_ALL).unwrap(), topology())
    }

    #[test]
    fn redacting_rule_may_send_pii_to_an_untrusted_provider() {
        let mut i = input("auto", HARD_TEXT);
        i.pii.insert("email".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!((d.target.as_str(), d.redact, d.rerouted), ("openai/gpt-4o", true, false), "{d:?}");
    }

    #[test]
    fn redaction_does_not_lift_a_callers_or_tenants_tag() {
        let mut i = input("auto", HARD_TEXT);
        i.tags = vec!["secret".into()];
        i.pii.insert("email".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.rule, "redacting-escalation");
        assert_eq!(d.target, "anthropic/claude-sonnet", "the trusted fallback, not the untrusted route: {d:?}");
        assert!(d.reasons.iter().any(|r| r.contains("PII only")), "{:?}", d.reasons);
    }

    #[test]
    fn redaction_does_not_lift_a_pii_tag_the_caller_gave() {
        let mut i = input("auto", HARD_TEXT);
        i.tags = vec!["pii".into()];
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "anthropic/claude-sonnet", "{d:?}");
        i.tags.clear();
        i.pii.insert("email".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "openai/gpt-4o", "the scanner's own pii is redacted: {d:?}");
    }

    #[test]
    fn a_tenants_models_bound_every_target_it_is_served_by() {
        let models = vec!["local".to_owned(), "anthropic/*".to_owned()];
        let limited = |model, text| RouteInput { models: &models, tenant: "interns", ..input(model, text) };
        // The rule's route is not among them: its allowed fallback serves instead.
        let d = escalate_all().decide(&limited("auto", HARD_TEXT));
        assert_eq!((d.target.as_str(), d.rerouted), ("anthropic/claude-sonnet", true), "{d:?}");
        assert!(d.reasons.iter().any(|r| r.contains("not among the models tenant \"interns\" may use [local, anthropic/*]")), "{:?}", d.reasons);
        assert!(d.fallbacks.iter().all(|t| t == "local/local-small"), "{d:?}");
        // An explicit model outside them follows on_violation (reroute: the local engine).
        let d = policy().decide(&limited("openai/gpt-4o-mini", "Hi"));
        assert_eq!((d.target.as_str(), d.rerouted), ("local/local-small", true), "{d:?}");
        // A glob and `local` let their targets through unchanged; no list allows everything.
        assert!(!policy().decide(&limited("anthropic/claude-sonnet", "Hi")).rerouted);
        assert!(!policy().decide(&limited("local", "Hi")).rerouted);
        assert!(!escalate_all().decide(&input("auto", HARD_TEXT)).rerouted);
        // Nothing allowed left: refused.
        let only_mini = vec!["openai/gpt-4o-mini".to_owned()];
        let d = policy().decide(&RouteInput { models: &only_mini, ..input("anthropic/claude-sonnet", "Hi") });
        assert!(d.violation.as_deref().is_some_and(|v| v.contains("not among the models")), "{d:?}");
    }

    #[test]
    fn non_redacting_rule_is_rerouted_away_from_an_untrusted_provider() {
        let mut i = input("auto", "Hi");
        i.tags = vec!["confidential".into()];
        let d = escalate_all().decide(&i);
        assert_eq!(d.rule, "default");
        assert_eq!(d.target, "local/local-small");
        assert!(d.rerouted && d.violation.is_none(), "{d:?}");
        assert_eq!(d.tier, Tier::Local);
    }

    #[test]
    fn unscannable_content_cannot_be_redacted_so_it_does_not_leave() {
        let mut i = input("auto", HARD_TEXT);
        i.pii.insert("unscannable".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "anthropic/claude-sonnet", "trusted fallback first: {d:?}");
        assert!(d.rerouted);
    }

    #[test]
    fn media_the_guard_keeps_from_its_route_is_refused_rather_than_sent_to_the_text_only_engine() {
        let mut i = input("auto", "Hi");
        i.tags = vec!["confidential".into()];
        i.pii.insert("unscannable".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.rule, "default");
        assert!(!d.rerouted, "{d:?}");
        let why = d.violation.as_deref().unwrap_or_default();
        assert!(why.contains("not trusted") && why.contains("reads text only"), "{d:?}");
        // Text alone still goes to the local fallback.
        i.pii.clear();
        let d = escalate_all().decide(&i);
        assert_eq!((d.target.as_str(), d.rerouted, d.violation.as_deref()), ("local/local-small", true, None));
    }

    #[test]
    fn media_keeps_its_remote_fallbacks_but_not_the_local_one() {
        let mut i = input("auto", HARD_TEXT);
        i.pii.insert("unscannable".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "anthropic/claude-sonnet", "{d:?}");
        assert!(d.fallbacks.is_empty(), "{d:?}");
        assert!(d.reasons.iter().any(|r| r.contains("reads text only")), "{:?}", d.reasons);
    }

    #[test]
    fn residency_drops_targets_outside_it_even_with_redaction() {
        let eu = vec!["eu".to_owned()];
        let mut i = input("auto", HARD_TEXT);
        i.residency = &eu;
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "anthropic/claude-sonnet", "{d:?}");
        assert_eq!(d.fallbacks, vec!["local/local-small".to_owned()]);
        let us = vec!["us".to_owned()];
        i.residency = &us;
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "openai/gpt-4o");
        assert!(d.fallbacks.is_empty(), "eu-central and eu-west are outside us: {d:?}");
    }

    #[test]
    fn reject_rule_answers_with_a_violation() {
        let mut i = input("gpt-4o", "Hi");
        i.resolved_model = Some("openai/gpt-4o");
        i.pii.insert("phone".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.rule, "reject-gpt4");
        assert!(d.violation.as_deref().is_some_and(|v| v.contains("not trusted")), "{d:?}");
    }

    #[test]
    fn explicit_model_with_pii_is_rerouted_by_the_policy_default() {
        let mut i = input("gpt-4o-mini", "Hi");
        i.resolved_model = Some("openai/gpt-4o-mini");
        i.pii.insert("email".into(), 1);
        let d = escalate_all().decide(&i);
        assert_eq!(d.rule, EXPLICIT_RULE);
        assert_eq!(d.target, "local/local-small");
        assert!(d.rerouted);
    }

    #[test]
    fn reasons_name_the_rule_conditions_and_signals() {
        let mut i = input("auto", HARD_TEXT);
        i.pii.insert("email".into(), 1);
        let d = escalate_all().decide(&i);
        let all = d.reasons.join("\n");
        assert!(all.contains("matched rule \"redacting-escalation\" (when complexity hard)"), "{all}");
        assert!(all.contains("PII found: email×1"), "{all}");
        assert!(all.contains("reasoning markers"), "{all}");
        // The score as the header gives it, the threshold as configured: never "0.55 < 0.55".
        let first = &d.reasons[0];
        assert_eq!(*first, format!("complexity {:.4} >= threshold {}", d.complexity, escalate_all().policy.classifier.complexity_threshold), "{first}");
    }

    #[test]
    fn open_circuits_are_skipped_while_an_alternative_is_left() {
        let open = vec!["openai/gpt-4o".to_owned()];
        let mut i = input("auto", HARD_TEXT);
        i.unavailable = &open;
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "anthropic/claude-sonnet", "{d:?}");
        assert_eq!(d.fallbacks, vec!["local/local-small".to_owned()]);
        assert!(d.reasons.iter().any(|r| r.contains("circuit open")));
        assert_eq!(d.stands_in_for.as_deref(), Some("openai/gpt-4o"), "the target stands in for the open one");
        let open_fallback = vec!["anthropic/claude-sonnet".to_owned()];
        i.unavailable = &open_fallback;
        let d = escalate_all().decide(&i);
        assert_eq!((d.target.as_str(), d.stands_in_for), ("openai/gpt-4o", None), "only a fallback was skipped");
        let everything = vec!["openai/gpt-4o-mini".to_owned(), "local/local-small".to_owned()];
        let mut i = input("auto", "Hi");
        i.unavailable = &everything;
        let d = escalate_all().decide(&i);
        assert_eq!(d.target, "openai/gpt-4o-mini", "nothing left: the decision stands");
    }
}
