use std::collections::BTreeMap;

use wildmatch::WildMatch;

use crate::complexity::score_complexity;
use crate::{Hardness, OnViolation, Policy, Rule, LOCAL_ALIAS};

/// Everything the router knows about one request. Built by the gateway; no I/O here.
#[derive(Debug, Clone, Default)]
pub struct RouteInput<'a> {
    /// `model` as sent.
    pub requested_model: &'a str,
    /// The resolved `provider/model` for an explicit model, if it resolved.
    pub resolved_model: Option<&'a str>,
    /// The tenant's configured name.
    pub tenant: &'a str,
    /// Privacy tags: the caller's `x-switchyard-tags` and the tenant's `tags`.
    pub tags: Vec<String>,
    /// PII kinds found and their counts (never the values).
    pub pii: BTreeMap<String, u32>,
    /// The conversation's text, for classification.
    pub text: &'a str,
    /// Number of messages.
    pub turns: usize,
    /// Prompt tokens, estimated.
    pub prompt_tokens: u32,
    /// The request defines tools.
    pub has_tools: bool,
    /// The local engine's full target (`local/<name>`), used to expand the `local` alias.
    pub local_target: &'a str,
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
    /// Privacy signals.
    pub privacy: PrivacySummary,
    /// PII is redacted before the request leaves.
    pub redact: bool,
    /// Targets to try next, in order.
    pub fallbacks: Vec<String>,
    /// What led to the decision.
    pub reasons: Vec<String>,
    /// What to do if the target is not allowed.
    pub on_violation: OnViolation,
}

/// The rule name used when the client named a model and no rule matched it.
pub const EXPLICIT_RULE: &str = "explicit";

/// Decides where a request goes. `auto` requests go through the rules without
/// `when.requested_model`; explicit models are served as asked unless a rule with a matching
/// `when.requested_model` takes them.
pub fn decide(policy: &Policy, input: &RouteInput<'_>) -> Decision {
    let complexity = score_complexity(input.text, input.turns, input.prompt_tokens, input.has_tools);
    let hard = complexity.score >= policy.classifier.complexity_threshold;
    let mut tags: Vec<String> = input.tags.clone();
    if !input.pii.is_empty() {
        tags.push("pii".to_owned());
    }
    tags.sort();
    tags.dedup();
    let privacy = PrivacySummary { tags, pii: input.pii.clone() };
    let is_auto = input.requested_model == "auto";
    let matched = policy.rules.iter().find(|r| rule_matches(r, input, is_auto, hard, &privacy.tags));
    let expand = |t: &str| if t == LOCAL_ALIAS { input.local_target.to_owned() } else { t.to_owned() };
    let mut reasons = Vec::new();
    reasons.push(format!(
        "complexity {:.2} {} threshold {:.2}",
        complexity.score,
        if hard { ">=" } else { "<" },
        policy.classifier.complexity_threshold
    ));
    reasons.extend(complexity.reasons);
    let (rule, target, fallbacks, redact, on_violation) = if let Some(rule) = matched {
        reasons.push(format!("matched rule {:?}", rule.name));
        (
            rule.name.clone(),
            expand(rule.route.get_ref()),
            rule.fallback.iter().map(|f| expand(f.get_ref())).collect(),
            rule.redact,
            rule.on_violation.unwrap_or(policy.on_violation),
        )
    } else {
        let target = input.resolved_model.unwrap_or(input.requested_model).to_owned();
        reasons.push(format!("explicit model {target:?} served as asked"));
        (EXPLICIT_RULE.to_owned(), target, Vec::new(), false, policy.on_violation)
    };
    let tier = if target == input.local_target { Tier::Local } else { Tier::Remote };
    Decision {
        tier,
        target,
        rule,
        complexity: complexity.score,
        hard,
        privacy,
        redact,
        fallbacks,
        reasons,
        on_violation,
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
        && (w.privacy.is_empty() || w.privacy.iter().any(|p| tags.contains(p)))
        && w.complexity.is_none_or(|c| (c == Hardness::Hard) == hard)
        && (w.tenant.is_empty() || w.tenant.iter().any(|t| t == input.tenant))
        && w.min_prompt_tokens.is_none_or(|n| input.prompt_tokens >= n)
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
        RouteInput {
            requested_model: model,
            tenant: "default",
            text,
            turns: 1,
            prompt_tokens: 10,
            local_target: "local/local-small",
            ..RouteInput::default()
        }
    }

    fn policy() -> Policy {
        Policy::parse(POLICY).unwrap()
    }

    const HARD_TEXT: &str = "Prove step by step that the algorithm's complexity is optimal; derive x^2 = y = z.";

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
}
