use serde::Deserialize;
use toml::Spanned;

/// The short target name a policy may use for the embedded engine.
pub const LOCAL_ALIAS: &str = "local";

/// The policy target meaning "the configured frontier models, in configuration order" (the
/// local engine when none is configured).
pub const FRONTIER_ALIAS: &str = "frontier";

/// What to do when a request may not go where it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// Serve it elsewhere (first allowed fallback, else local).
    #[default]
    Reroute,
    /// Answer 403 `policy_violation`.
    Reject,
}

/// `when.complexity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hardness {
    /// Complexity below the threshold.
    Easy,
    /// Complexity at or above the threshold.
    Hard,
}

/// `strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Route straight to the target.
    Direct,
    /// Answer locally first (non-streamed requests), escalate to the route when the local
    /// answer's confidence is low.
    Cascade,
}

/// `[classifier]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classifier {
    /// Complexity at or above this is "hard".
    #[serde(default = "default_threshold")]
    pub complexity_threshold: f64,
    /// A learned scorer's model file (`switchyard train-router` writes one); the gateway reads
    /// it. Unset: the transparent baseline scorer.
    #[serde(default)]
    pub model: Option<String>,
    /// With `model`: the baseline scorer's share of the complexity, each score read as its
    /// percentile among the model's training prompts (0, the default: the model alone).
    #[serde(default)]
    pub baseline_weight: f64,
    /// `strategy = "cascade"` keeps the local answer when the mean log-probability of its
    /// tokens is at least this (natural log; -0.5 ≈ the model gave its tokens 61 % on average).
    #[serde(default = "default_cascade_min_logprob")]
    pub cascade_min_logprob: f64,
}

const fn default_cascade_min_logprob() -> f64 {
    -0.5
}

const fn default_threshold() -> f64 {
    0.55
}

impl Default for Classifier {
    fn default() -> Self {
        Self {
            complexity_threshold: default_threshold(),
            model: None,
            baseline_weight: 0.0,
            cascade_min_logprob: default_cascade_min_logprob(),
        }
    }
}

/// Rule names the gateway gives requests no rule decided: an explicit model no rule names, an
/// embeddings request, a request refused before routing (in metrics).
pub const RESERVED_RULE_NAMES: [&str; 3] = ["explicit", "embeddings", "none"];

/// `when.privacy = ["*"]`: any privacy tag.
pub const ANY_TAG: &str = "*";

/// A rule's conditions; all present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Any of these privacy tags present (lowercased, as the caller's and the tenant's tags are:
    /// tags match whatever their case); `"*"` is any privacy tag at all.
    #[serde(default, deserialize_with = "tag_list")]
    pub privacy: Vec<String>,
    /// Easy or hard.
    pub complexity: Option<Hardness>,
    /// The request's tenant is one of these.
    #[serde(default, deserialize_with = "non_empty_list")]
    pub tenant: Vec<String>,
    /// Glob over the requested model (as sent, or resolved `provider/model`).
    pub requested_model: Option<String>,
    /// At least this many prompt tokens (estimated).
    pub min_prompt_tokens: Option<u32>,
    /// More than this share (0.8 = 80 %) of the tenant's daily or monthly budget is already
    /// spent or reserved. Never holds for tenants without a budget.
    pub budget_used_over: Option<f64>,
}

/// A written list condition must name something: `[]` reads as "never", but an absent condition
/// is "always", so an empty list would silently make the rule match every request.
fn non_empty_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(deserializer)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom("an empty list would make this rule match every request; name at least one value or leave the condition out"));
    }
    Ok(list)
}

/// A non-empty list of privacy tags, trimmed and lowercased. A blank tag, or one holding a comma
/// (the header splits tags at commas), could never match: refused.
fn tag_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let tags: Vec<String> = non_empty_list(deserializer)?.iter().map(|tag| tag.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}').to_lowercase()).collect();
    if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.contains(',')) {
        return Err(serde::de::Error::custom(format!(
            "privacy tag {bad:?} can never match: tags are single words (the x-switchyard-tags header splits at commas); list each tag on its own"
        )));
    }
    if let Some(bad) = tags.iter().find(|t| t.contains('*') && t.as_str() != ANY_TAG) {
        return Err(serde::de::Error::custom(format!(
            "privacy tag {bad:?}: tags are matched whole, not as patterns; \"*\" alone means any tag"
        )));
    }
    Ok(tags)
}

impl When {
    /// True when the privacy condition holds for a request tagged `tags` (lowercased): absent, a
    /// tag it names, or `"*"` and any tag.
    pub fn privacy_holds(&self, tags: &[String]) -> bool {
        self.privacy.is_empty() || self.privacy.iter().any(|p| if p == ANY_TAG { !tags.is_empty() } else { tags.iter().any(|t| t.eq_ignore_ascii_case(p)) })
    }

    /// True when the rule has no condition at all.
    pub fn matches_everything(&self) -> bool {
        self.tenant.is_empty() && self.privacy.is_empty() && self.only_tenant_and_privacy_conditions()
    }

    /// True when the rule matches every request of `tenant`, whose own privacy tags are
    /// `tenant_tags`: no condition but, maybe, a tenant list naming it and a privacy condition
    /// naming one of its tags. Later rules then never see that tenant's requests.
    pub fn matches_all_of(&self, tenant: &str, tenant_tags: &[String]) -> bool {
        let tenant_holds = self.tenant.is_empty() || self.tenant.iter().any(|t| t == tenant);
        // The tenant's own tags are on every one of its requests.
        let privacy_holds = self.privacy_holds(tenant_tags);
        tenant_holds && privacy_holds && self.only_tenant_and_privacy_conditions()
    }

    /// No condition other than `tenant` and `privacy`.
    fn only_tenant_and_privacy_conditions(&self) -> bool {
        self.complexity.is_none()
            && self.requested_model.is_none()
            && self.min_prompt_tokens.is_none()
            && self.budget_used_over.is_none()
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in headers, `/v1/route`, metrics and the audit log.
    pub name: String,
    /// Conditions.
    #[serde(default)]
    pub when: When,
    /// Target: `local` or `provider/model`.
    pub route: Spanned<String>,
    /// Tried in order when the route fails or is not allowed.
    #[serde(default)]
    pub fallback: Vec<Spanned<String>>,
    /// Overrides the policy's `on_violation`.
    pub on_violation: Option<OnViolation>,
    /// Replace PII with placeholders before the request leaves.
    #[serde(default)]
    pub redact: bool,
    /// How the target is used.
    pub strategy: Option<Strategy>,
    /// Where a request this rule serves locally goes when the local engine cannot meet its
    /// latency targets (`[local] slo_ttft_ms`, `slo_decode_tok_s`) and the request may leave.
    pub spill: Option<Spanned<String>>,
}

impl Rule {
    /// The route then each fallback, with the field each comes from.
    pub fn targets(&self) -> impl Iterator<Item = (&'static str, &Spanned<String>)> {
        std::iter::once(("route", &self.route)).chain(self.fallback.iter().map(|f| ("fallback", f)))
    }

    /// Every target the rule may send a request to: route, fallbacks, then `spill`.
    pub fn all_targets(&self) -> impl Iterator<Item = (&'static str, &Spanned<String>)> {
        self.targets().chain(self.spill.iter().map(|s| ("spill", s)))
    }
}

/// A routing policy (`policies/*.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// For requests no rule matched (explicit models).
    #[serde(default)]
    pub on_violation: OnViolation,
    /// Complexity settings.
    #[serde(default)]
    pub classifier: Classifier,
    /// First match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// True for the local engine's alias or one of its `local/<name>` targets.
fn is_local(target: &str) -> bool {
    target == LOCAL_ALIAS || target.starts_with("local/")
}

/// A policy file that cannot be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{line}:{column}: {message}")]
pub struct PolicyError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// A policy that parses but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// What is wrong, naming rule and target.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

impl Policy {
    /// Parses a policy file's text. Unknown keys and wrong types are errors with a position.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            PolicyError { line, column, message: e.message().to_owned() }
        })
    }

    /// True when a rule that may apply to `tenant` matches `model` by its `when.requested_model`:
    /// a request naming it is routed by that rule (if its other conditions hold), even when no
    /// provider serves a model of that name.
    pub fn claims(&self, model: &str, tenant: &str) -> bool {
        self.rules.iter().any(|r| {
            r.when.requested_model.as_deref().is_some_and(|glob| wildmatch::WildMatch::new(glob).matches(model))
                && (r.when.tenant.is_empty() || r.when.tenant.iter().any(|t| t == tenant))
        })
    }

    /// Static checks: every target exists (`is_target` says which do; `local` always does),
    /// the threshold is in range and the last rule matches everything. `text` is the file the
    /// policy was parsed from, for line numbers.
    pub fn problems(&self, text: &str, is_target: &dyn Fn(&str) -> bool) -> Vec<PolicyProblem> {
        let mut problems = Vec::new();
        let t = self.classifier.complexity_threshold;
        if !(0.0..=1.0).contains(&t) {
            problems.push(PolicyProblem {
                line: None,
                message: format!("classifier.complexity_threshold = {t} must be between 0 and 1"),
            });
        }
        let w = self.classifier.baseline_weight;
        if !(0.0..=1.0).contains(&w) {
            problems.push(PolicyProblem { line: None, message: format!("classifier.baseline_weight = {w} must be between 0 and 1") });
        } else if w > 0.0 && self.classifier.model.is_none() {
            problems.push(PolicyProblem {
                line: None,
                message: format!("classifier.baseline_weight = {w} mixes a learned model with the baseline, but classifier.model names none"),
            });
        }
        // A log-probability is at most 0: a threshold above it would escalate every answer.
        let keep_at = self.classifier.cascade_min_logprob;
        if !(keep_at.is_finite() && keep_at <= 0.0) {
            problems.push(PolicyProblem {
                line: None,
                message: format!("classifier.cascade_min_logprob = {keep_at} must be a log-probability, 0 or below (-0.5: about 61 % per token)"),
            });
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let line = Some(line_col(text, rule.route.span().start).0);
            // Rule names label headers, metrics and the audit log: two alike could not be told apart.
            if self.rules[..i].iter().any(|earlier| earlier.name == rule.name) {
                problems.push(PolicyProblem { line, message: format!("rule {:?}: the name is used by an earlier rule", rule.name) });
            }
            // A name goes into a response header: it must be one that a header can carry.
            if rule.name.trim().is_empty() || rule.name.chars().any(char::is_control) {
                problems.push(PolicyProblem { line, message: format!("rule {:?}: a rule name must be non-empty, without control characters (it is sent as x-switchyard-rule)", rule.name) });
            }
            // The gateway labels requests no rule decided with these: a rule of that name could not
            // be told apart from them in metrics, the audit log and x-switchyard-rule.
            if RESERVED_RULE_NAMES.contains(&rule.name.as_str()) {
                problems.push(PolicyProblem { line, message: format!("rule {:?}: the name is reserved (the gateway labels requests with {}): choose another", rule.name, RESERVED_RULE_NAMES.join(", ")) });
            }
            if rule.strategy == Some(Strategy::Cascade) && is_local(rule.route.get_ref()) {
                problems.push(PolicyProblem { line, message: format!("rule {:?}: strategy = \"cascade\" answers locally first, then escalates to the route: the route must be remote", rule.name) });
            }
            if rule.when.requested_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                problems.push(PolicyProblem { line, message: format!("rule {:?}: when.requested_model = \"\" matches no request", rule.name) });
            }
            if let Some(share) = rule.when.budget_used_over {
                // The used share hardly passes 1: a request the budget cannot hold is refused.
                if !(0.0..=1.0).contains(&share) {
                    problems.push(PolicyProblem {
                        line: Some(line_col(text, rule.route.span().start).0),
                        message: format!("rule {:?}: when.budget_used_over = {share} must be a share between 0 and 1 (0.8 = 80 %)", rule.name),
                    });
                }
            }
            if let Some(spill) = rule.spill.as_ref().filter(|s| is_local(s.get_ref())) {
                problems.push(PolicyProblem {
                    line: Some(line_col(text, spill.span().start).0),
                    message: format!("rule {:?}.spill: the spill target takes requests off the local engine, so it must be remote, not {:?}", rule.name, spill.get_ref()),
                });
            }
            if let Some(spill) = &rule.spill {
                if !is_local(rule.route.get_ref()) {
                    problems.push(PolicyProblem {
                        line: Some(line_col(text, spill.span().start).0),
                        message: format!(
                            "rule {:?}.spill: only a rule that routes to \"local\" can spill (this one routes to {:?})",
                            rule.name,
                            rule.route.get_ref()
                        ),
                    });
                }
            }
            for (field, target) in rule.all_targets() {
                if target.get_ref() != LOCAL_ALIAS && target.get_ref() != FRONTIER_ALIAS && !is_target(target.get_ref()) {
                    problems.push(PolicyProblem {
                        line: Some(line_col(text, target.span().start).0),
                        message: format!(
                            "rule {:?}.{field}: target {:?} is not configured",
                            rule.name,
                            target.get_ref()
                        ),
                    });
                }
            }
        }
        match self.rules.last() {
            None => problems.push(PolicyProblem {
                line: None,
                message: "the policy has no [[rule]]; it must end with a rule that matches everything".into(),
            }),
            Some(last) if !last.when.matches_everything() => problems.push(PolicyProblem {
                line: Some(line_col(text, last.route.span().start).0),
                message: format!(
                    "rule {:?} is the last rule but has conditions; a policy must end with a rule that matches everything",
                    last.name
                ),
            }),
            Some(_) => {}
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
on_violation = "reroute"
[classifier]
complexity_threshold = 0.5

[[rule]]
name = "hard-escalates"
when.complexity = "hard"
route = "openai/gpt-4o"
fallback = ["local"]

[[rule]]
name = "default"
route = "local"
"#;

    #[test]
    fn parses_a_good_policy_without_problems() {
        let p = Policy::parse(GOOD).unwrap();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].when.complexity, Some(Hardness::Hard));
        assert!(p.problems(GOOD, &|t| t == "openai/gpt-4o").is_empty());
    }

    #[test]
    fn rejects_unknown_key_with_its_line() {
        let text = "[[rule]]\nname = \"x\"\nroute = \"local\"\nroot = 1\n";
        let err = Policy::parse(text).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("root"), "{err}");
    }

    #[test]
    fn an_empty_list_condition_is_an_error_with_its_line() {
        for key in ["privacy", "tenant"] {
            let text = format!("[[rule]]\nname = \"x\"\nwhen.{key} = []\nroute = \"openai/gpt-4o\"\n\n[[rule]]\nname = \"d\"\nroute = \"local\"\n");
            let err = Policy::parse(&text).unwrap_err();
            assert_eq!(err.line, 3, "{err}");
            assert!(err.message.contains("empty list"), "{err}");
        }
    }

    #[test]
    fn reports_unconfigured_target_with_rule_and_line() {
        let problems = Policy::parse(GOOD).unwrap().problems(GOOD, &|_| false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(9));
        assert!(problems[0].message.contains("\"hard-escalates\".route"), "{}", problems[0]);
        assert!(problems[0].message.contains("openai/gpt-4o"), "{}", problems[0]);
    }

    #[test]
    fn reports_a_last_rule_with_conditions() {
        let text = "[[rule]]\nname = \"only-hard\"\nwhen.complexity = \"hard\"\nroute = \"local\"\n";
        let problems = Policy::parse(text).unwrap().problems(text, &|_| true);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("matches everything"));
    }

    #[test]
    fn spill_is_checked_like_a_target_and_only_for_local_rules() {
        let text = "[[rule]]\nname = \"easy\"\nroute = \"local\"\nspill = \"openai/gpt-4o-mini\"\n[[rule]]\nname = \"d\"\nroute = \"openai/gpt-4o\"\nspill = \"openai/gpt-4o\"\n";
        let policy = Policy::parse(text).unwrap();
        assert_eq!(policy.rules[0].spill.as_ref().map(|s| s.get_ref().as_str()), Some("openai/gpt-4o-mini"));
        let problems = policy.problems(text, &|t| t == "openai/gpt-4o");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("\"easy\".spill") && problems[0].message.contains("not configured"), "{}", problems[0]);
        assert_eq!(problems[0].line, Some(4));
        assert!(problems[1].message.contains("only a rule that routes to \"local\" can spill"), "{}", problems[1]);
    }

    #[test]
    fn thresholds_that_can_never_hold_are_problems() {
        let text = "[classifier]\ncascade_min_logprob = 3.0\n\n[[rule]]\nname = \"x\"\nwhen.budget_used_over = 5.0\nroute = \"local\"\n\n[[rule]]\nname = \"d\"\nroute = \"local\"\n";
        let problems = Policy::parse(text).unwrap().problems(text, &|_| true);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("cascade_min_logprob = 3 must be a log-probability, 0 or below"), "{problems:?}");
        assert!(problems[1].message.contains("when.budget_used_over = 5 must be a share between 0 and 1"), "{problems:?}");
    }

    #[test]
    fn a_rule_routing_to_the_local_engine_by_its_full_name_can_spill() {
        let text = "[[rule]]\nname = \"d\"\nroute = \"local/local-small\"\nspill = \"openai/gpt-4o\"\n";
        assert_eq!(Policy::parse(text).unwrap().problems(text, &|t| t != "local/other"), vec![]);
    }

    #[test]
    fn a_rule_claims_the_model_names_its_glob_matches_for_its_tenants() {
        let text = "[[rule]]\nname = \"gpt\"\nwhen.requested_model = \"gpt-4*\"\nroute = \"local\"\n\n[[rule]]\nname = \"acme\"\nwhen.tenant = [\"acme\"]\nwhen.requested_model = \"claude*\"\nroute = \"local\"\n\n[[rule]]\nname = \"d\"\nroute = \"local\"\n";
        let policy = Policy::parse(text).unwrap();
        assert!(policy.claims("gpt-4o", "anyone") && !policy.claims("gpt-3.5", "anyone"));
        assert!(policy.claims("claude-3", "acme") && !policy.claims("claude-3", "globex"));
    }

    #[test]
    fn names_the_gateway_gives_are_reserved() {
        for name in RESERVED_RULE_NAMES {
            let text = format!("[[rule]]\nname = \"{name}\"\nroute = \"local\"\n");
            let problems = Policy::parse(&text).unwrap().problems(&text, &|_| true);
            assert!(problems.iter().any(|p| p.message.contains("reserved")), "{name}: {problems:?}");
        }
    }

    #[test]
    fn a_star_matches_any_privacy_tag_and_blank_or_comma_tags_are_refused() {
        let text = "[[rule]]\nname = \"x\"\nwhen.privacy = [\"*\"]\nroute = \"local\"\n";
        let when = &Policy::parse(text).unwrap().rules[0].when;
        assert!(when.privacy_holds(&["restricted".to_owned()]) && when.privacy_holds(&["pii".to_owned()]));
        assert!(!when.privacy_holds(&[]));
        for bad in ["\"pii,confidential\"", "\" \""] {
            let text = format!("[[rule]]\nname = \"x\"\nwhen.privacy = [{bad}]\nroute = \"local\"\n");
            let err = Policy::parse(&text).unwrap_err().to_string();
            assert!(err.contains("can never match"), "{err}");
        }
        let text = "[[rule]]\nname = \"x\"\nwhen.privacy = [\"p*\"]\nroute = \"local\"\n";
        assert!(Policy::parse(text).unwrap_err().to_string().contains("not as patterns"));
    }

    #[test]
    fn privacy_tags_are_read_lowercased() {
        let text = "[[rule]]\nname = \"x\"\nwhen.privacy = [\"Confidential\", \" PII \"]\nroute = \"local\"\n";
        assert_eq!(Policy::parse(text).unwrap().rules[0].when.privacy, ["confidential", "pii"]);
    }

    #[test]
    fn names_a_header_cannot_carry_a_local_spill_and_a_local_cascade_are_problems() {
        let text = "[[rule]]\nname = \"\"\nroute = \"local\"\nspill = \"local\"\n[[rule]]\nname = \"a\\nb\"\nstrategy = \"cascade\"\nroute = \"local\"\n";
        let problems = Policy::parse(text).unwrap().problems(text, &|_| true);
        let all: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all.iter().filter(|m| m.contains("a rule name must be non-empty")).count() == 2, "{all:?}");
        assert!(all.iter().any(|m| m.contains("\"\".spill") && m.contains("must be remote")), "{all:?}");
        assert!(all.iter().any(|m| m.contains("cascade") && m.contains("the route must be remote")), "{all:?}");
    }

    #[test]
    fn a_name_used_twice_and_an_empty_requested_model_are_problems() {
        let text = "[[rule]]\nname = \"a\"\nwhen.requested_model = \"\"\nroute = \"local\"\n[[rule]]\nname = \"a\"\nroute = \"local\"\n";
        let problems = Policy::parse(text).unwrap().problems(text, &|_| true);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("matches no request") && problems[0].line == Some(4), "{problems:?}");
        assert!(problems[1].message.contains("used by an earlier rule") && problems[1].line == Some(7), "{problems:?}");
    }

    #[test]
    fn a_baseline_weight_needs_a_model_and_a_share() {
        let route = "\n[[rule]]\nname = \"d\"\nroute = \"local\"\n";
        for (classifier, expected) in [
            ("baseline_weight = 0.3", Some("names none")),
            ("model = \"m.json\"\nbaseline_weight = 1.2", Some("between 0 and 1")),
            ("model = \"m.json\"\nbaseline_weight = 0.3", None),
        ] {
            let text = format!("[classifier]\n{classifier}\n{route}");
            let problems = Policy::parse(&text).unwrap().problems(&text, &|_| true);
            match expected {
                Some(words) => assert!(problems.len() == 1 && problems[0].message.contains(words), "{classifier}: {problems:?}"),
                None => assert!(problems.is_empty(), "{classifier}: {problems:?}"),
            }
        }
    }

    #[test]
    fn reports_an_empty_policy_and_bad_threshold() {
        let text = "[classifier]\ncomplexity_threshold = 1.5\n";
        let problems = Policy::parse(text).unwrap().problems(text, &|_| true);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
