//! Residency and privacy: where each target runs, whether it may see privacy-tagged data, and
//! the checks that keep a request inside its tenant's regions and away from untrusted providers.

use std::collections::HashMap;

use crate::decide::Tier;
use crate::policy::{line_col, Policy, PolicyProblem, FRONTIER_ALIAS, LOCAL_ALIAS};

/// What the router needs to know about one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Local engine or remote provider.
    pub tier: Tier,
    /// Where it runs; `None` when the configuration does not say (never inside a residency).
    pub region: Option<String>,
    /// May it see privacy-tagged data unredacted? The local engine always may.
    pub trusted: bool,
}

/// Every configured target, by its full name (`local/<name>`, `provider/model`).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    targets: HashMap<String, TargetInfo>,
    local_target: Option<String>,
    /// Frontier models in configuration order (what `frontier` expands to).
    frontier: Vec<String>,
}

impl Topology {
    /// An empty topology; add targets with [`Topology::with_local`] and [`Topology::with_remote`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the embedded engine, `local/<name>`, running in `region`.
    #[must_use]
    pub fn with_local(mut self, target: &str, region: &str) -> Self {
        self.local_target = Some(target.to_owned());
        self.targets.insert(
            target.to_owned(),
            TargetInfo { tier: Tier::Local, region: Some(region.to_owned()), trusted: true },
        );
        self
    }

    /// Adds a remote `provider/model`.
    #[must_use]
    pub fn with_remote(mut self, target: &str, region: Option<&str>, trusted: bool) -> Self {
        self.targets
            .insert(target.to_owned(), TargetInfo { tier: Tier::Remote, region: region.map(str::to_owned), trusted });
        self
    }

    /// Adds a remote `provider/model` that is a frontier model (a proprietary API): a policy's
    /// `frontier` target expands to these, in the order added.
    #[must_use]
    pub fn with_frontier(mut self, target: &str, region: Option<&str>, trusted: bool) -> Self {
        self.frontier.push(target.to_owned());
        self.with_remote(target, region, trusted)
    }

    /// Every target's full name, in no particular order.
    pub fn target_names(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }

    /// The local engine's full target name.
    pub fn local_target(&self) -> Option<&str> {
        self.local_target.as_deref()
    }

    /// A target by full name; `local` is the engine.
    pub fn get(&self, target: &str) -> Option<&TargetInfo> {
        if target == LOCAL_ALIAS {
            return self.local_target.as_ref().and_then(|t| self.targets.get(t));
        }
        self.targets.get(target)
    }

    /// The full names a policy target stands for: `local` is `local/<name>`; `frontier` is every
    /// frontier model in order, or the local engine when there is none; others are themselves.
    pub fn expand(&self, target: &str) -> Vec<String> {
        match target {
            LOCAL_ALIAS => self.local_target.iter().cloned().collect(),
            FRONTIER_ALIAS if self.frontier.is_empty() => self.local_target.iter().cloned().collect(),
            FRONTIER_ALIAS => self.frontier.clone(),
            _ => vec![target.to_owned()],
        }
    }
}

/// A tenant as the router sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantProfile {
    /// Configured name.
    pub name: String,
    /// Allowed regions; empty means anywhere.
    pub residency: Vec<String>,
    /// Privacy tags added to each of its requests.
    pub tags: Vec<String>,
    /// The targets its requests may be served by (see [`model_allowed`]); empty means any.
    pub models: Vec<String>,
}

/// True when `target` (a full name, `provider/model` or `local/<name>`) is among `models`, a
/// tenant's allowed models: `provider/model` names, `*` globs of them (`anthropic/*`), and
/// `local` for every in-process model. An empty list allows every target.
pub fn model_allowed(models: &[String], target: &str) -> bool {
    models.is_empty() || models.iter().any(|pattern| model_pattern_matches(pattern, target))
}

/// Why `tenant` may not use `target` under its `models` ([`model_allowed`]), or `None` when it may.
pub fn model_violation(models: &[String], tenant: &str, target: &str) -> Option<String> {
    (!model_allowed(models, target)).then(|| format!("target {target:?} is not among the models tenant {tenant:?} may use [{}]", models.join(", ")))
}

/// True when one entry of a tenant's `models` names `target`.
pub fn model_pattern_matches(pattern: &str, target: &str) -> bool {
    if pattern == LOCAL_ALIAS {
        return target == LOCAL_ALIAS || target.starts_with("local/");
    }
    wildmatch::WildMatch::new(pattern).matches(target)
}

/// True when `region` is inside `residency`: equal to an entry, or an entry followed by `-`
/// (`eu` allows `eu-west`). An empty residency allows every region; an unknown region is
/// allowed only then.
pub fn region_allowed(residency: &[String], region: Option<&str>) -> bool {
    if residency.is_empty() {
        return true;
    }
    let Some(region) = region else { return false };
    residency
        .iter()
        .any(|allowed| region == allowed || region.strip_prefix(allowed.as_str()).is_some_and(|rest| rest.starts_with('-')))
}

/// Whether a request's PII is replaced by placeholders before it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redacts {
    /// The rule redacts and every part of the request could be scanned.
    Yes,
    /// The rule does not redact.
    No,
    /// The rule redacts, but part of the request (an image, a file, audio) could not be scanned,
    /// so redaction cannot cover it.
    Unscannable,
    /// The rule redacts, but the request carries a tag other than `pii` (the caller's, the
    /// tenant's): the whole text is sensitive, and replacing the PII in it changes nothing.
    OtherTags,
}

impl Redacts {
    /// What a rule's `redact` achieves for a request of which part was `unscannable`, and which
    /// carries tags other than `pii` (`other_tags`).
    pub const fn of(redact: bool, unscannable: bool, other_tags: bool) -> Self {
        match (redact, unscannable, other_tags) {
            (false, _, _) => Self::No,
            (true, true, _) => Self::Unscannable,
            (true, false, true) => Self::OtherTags,
            (true, false, false) => Self::Yes,
        }
    }
}

/// Why a request may not go to a target, or `None` when it may.
///
/// `privacy_tagged`: the request carries a privacy tag; `redacts`: whether its PII will be
/// replaced by placeholders before it leaves (which does not lift residency).
pub fn violation(
    topology: &Topology,
    target: &str,
    residency: &[String],
    privacy_tagged: bool,
    redacts: Redacts,
) -> Option<String> {
    let Some(info) = topology.get(target) else {
        return Some(format!("target {target:?} is not configured"));
    };
    if !region_allowed(residency, info.region.as_deref()) {
        return Some(format!(
            "target {target:?} runs in region {} outside the tenant's residency [{}]",
            info.region.as_deref().unwrap_or("(unknown)"),
            residency.join(", ")
        ));
    }
    if privacy_tagged && !info.trusted {
        match redacts {
            Redacts::Yes => {}
            Redacts::No => return Some(format!("target {target:?} is not trusted with privacy-tagged data and the rule does not redact")),
            Redacts::Unscannable => {
                return Some(format!(
                    "target {target:?} is not trusted with privacy-tagged data, and the rule's redaction cannot cover content that could not be scanned (images, files, audio)"
                ))
            }
            Redacts::OtherTags => {
                return Some(format!(
                    "target {target:?} is not trusted with privacy-tagged data, and the rule's redaction covers PII only, not a request tagged by its caller or tenant"
                ))
            }
        }
    }
    None
}

impl Policy {
    /// Static residency check: every route and fallback of every rule that can apply to a tenant
    /// must run inside that tenant's residency. Rules after one that takes all of the tenant's
    /// `auto` requests never apply to it, unless they match a requested model (a request naming a
    /// model still reaches them). `text` is the policy file, for line numbers.
    pub fn residency_problems(&self, text: &str, topology: &Topology, tenants: &[TenantProfile]) -> Vec<PolicyProblem> {
        let mut problems = Vec::new();
        for tenant in tenants.iter().filter(|t| !t.residency.is_empty()) {
            let mut auto_taken = false;
            for rule in self.rules.iter().filter(|r| r.when.tenant.is_empty() || r.when.tenant.contains(&tenant.name)) {
                if auto_taken && rule.when.requested_model.is_none() {
                    continue;
                }
                for (field, target) in rule.all_targets() {
                    for full in topology.expand(target.get_ref()) {
                    let Some(info) = topology.get(&full) else { continue };
                    if !region_allowed(&tenant.residency, info.region.as_deref()) {
                        problems.push(PolicyProblem {
                            line: Some(line_col(text, target.span().start).0),
                            message: format!(
                                "rule {:?}.{field}: target {:?} runs in region {} outside tenant {:?}'s residency [{}]",
                                rule.name,
                                full,
                                info.region.as_deref().unwrap_or("(unknown)"),
                                tenant.name,
                                tenant.residency.join(", ")
                            ),
                        });
                    }
                    }
                }
                auto_taken |= rule.when.matches_all_of(&tenant.name, &tenant.tags);
            }
        }
        problems
    }

    /// Rules that rely on the per-request privacy guard: they route to an untrusted provider
    /// without `redact`, so privacy-tagged requests they match are rerouted or rejected.
    pub fn guard_warnings(&self, topology: &Topology) -> Vec<String> {
        let mut warnings = Vec::new();
        for rule in &self.rules {
            // Rerouting goes to a fallback the request may use, else to the local engine.
            let trusted_fallback = rule.fallback.iter().flat_map(|t| topology.expand(t.get_ref())).any(|t| topology.get(&t).is_some_and(|i| i.trusted));
            let rescued = trusted_fallback || topology.local_target().is_some();
            for (field, full) in rule.targets().flat_map(|(f, t)| topology.expand(t.get_ref()).into_iter().map(move |e| (f, e))) {
                let untrusted = topology.get(&full).is_some_and(|i| !i.trusted);
                if untrusted && !rule.redact {
                    warnings.push(format!(
                        "rule {:?}.{field}: target {:?} is not trusted and the rule does not redact; privacy-tagged requests it matches are {} by the privacy guard",
                        rule.name,
                        full,
                        match rule.on_violation.unwrap_or(self.on_violation) {
                            crate::OnViolation::Reroute if rescued => "rerouted (rejected, 403, for a tenant whose residency allows neither a trusted fallback nor the local engine)",
                            crate::OnViolation::Reroute => "rejected (403: no trusted fallback and no local engine to reroute them to)",
                            crate::OnViolation::Reject => "rejected",
                        }
                    ));
                }
            }
            let spill = rule.spill.iter().flat_map(|t| topology.expand(t.get_ref()));
            for full in spill.filter(|t| topology.get(t).is_some_and(|i| !i.trusted)) {
                if !rule.redact {
                    warnings.push(format!(
                        "rule {:?}.spill: target {:?} is not trusted and the rule does not redact; privacy-tagged requests it matches are never spilled there (they wait for the local engine)",
                        rule.name, full
                    ));
                }
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new()
            .with_local("local/small", "eu-west")
            .with_remote("openai/gpt-4o", Some("us-east"), false)
            .with_remote("azure/gpt-4o", Some("eu-west"), true)
            .with_remote("mystery/m", None, true)
    }

    #[test]
    fn residency_prefix_rule() {
        let eu = vec!["eu".to_owned()];
        assert!(region_allowed(&eu, Some("eu")));
        assert!(region_allowed(&eu, Some("eu-west")));
        assert!(!region_allowed(&eu, Some("europe")));
        assert!(!region_allowed(&eu, Some("us-east")));
        assert!(!region_allowed(&eu, None));
        assert!(region_allowed(&[], None));
    }

    #[test]
    fn violation_reasons() {
        let t = topology();
        let eu = vec!["eu".to_owned()];
        assert!(violation(&t, "local", &eu, true, Redacts::No).is_none());
        assert!(violation(&t, "openai/gpt-4o", &eu, false, Redacts::No).unwrap().contains("residency"));
        assert!(violation(&t, "openai/gpt-4o", &[], true, Redacts::No).unwrap().contains("the rule does not redact"));
        assert!(violation(&t, "openai/gpt-4o", &[], true, Redacts::Yes).is_none(), "redaction lifts trust");
        assert!(violation(&t, "openai/gpt-4o", &[], true, Redacts::Unscannable).unwrap().contains("could not be scanned"), "unless it cannot cover everything");
        assert!(violation(&t, "openai/gpt-4o", &[], true, Redacts::OtherTags).unwrap().contains("PII only"), "or the request is tagged beyond PII");
        assert!(violation(&t, "openai/gpt-4o", &eu, true, Redacts::Yes).is_some(), "but not residency");
        assert!(violation(&t, "azure/gpt-4o", &eu, true, Redacts::No).is_none());
        assert!(violation(&t, "mystery/m", &eu, false, Redacts::No).unwrap().contains("unknown"));
    }

    #[test]
    fn static_residency_check_names_rule_target_and_tenant() {
        let text = "[[rule]]\nname = \"acme-only\"\nwhen.tenant = [\"acme\"]\nroute = \"openai/gpt-4o\"\n\n[[rule]]\nname = \"default\"\nroute = \"local\"\nfallback = [\"azure/gpt-4o\"]\n";
        let policy = Policy::parse(text).unwrap();
        let tenants = vec![
            TenantProfile { name: "acme".into(), residency: vec!["eu".into()], ..TenantProfile::default() },
            TenantProfile { name: "globex".into(), residency: vec!["eu".into()], ..TenantProfile::default() },
        ];
        let problems = policy.residency_problems(text, &topology(), &tenants);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(4));
        let msg = &problems[0].message;
        assert!(msg.contains("\"acme-only\".route") && msg.contains("openai/gpt-4o") && msg.contains("\"acme\""), "{msg}");
    }

    #[test]
    fn rules_after_one_that_takes_all_of_a_tenants_requests_do_not_apply_to_it() {
        let us = vec![TenantProfile { name: "acme".into(), residency: vec!["us".into()], ..TenantProfile::default() }];
        let text = "[[rule]]\nname = \"acme\"\nwhen.tenant = [\"acme\"]\nroute = \"openai/gpt-4o\"\n\n[[rule]]\nname = \"default\"\nroute = \"local\"\n";
        assert!(Policy::parse(text).unwrap().residency_problems(text, &topology(), &us).is_empty());
        // With another condition the first rule leaves some of acme's requests to the next.
        let text = text.replace("when.tenant", "when.complexity = \"hard\"\nwhen.tenant");
        let problems = Policy::parse(&text).unwrap().residency_problems(&text, &topology(), &us);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("\"default\".route"), "{problems:?}");
    }

    #[test]
    fn a_privacy_rule_naming_a_tenants_own_tag_takes_all_its_requests() {
        // The README's walkthrough: acme-eu's requests all carry `confidential`, so the first rule
        // takes every one of them and the remote rule after it never sees them.
        let eu = |tags: Vec<String>| vec![TenantProfile { name: "acme".into(), residency: vec!["eu".into()], tags, ..TenantProfile::default() }];
        let text = "[[rule]]\nname = \"private\"\nwhen.privacy = [\"pii\", \"Confidential\"]\nroute = \"local\"\n\n[[rule]]\nname = \"hard\"\nroute = \"openai/gpt-4o\"\n";
        let policy = Policy::parse(text).unwrap();
        assert!(policy.residency_problems(text, &topology(), &eu(vec!["confidential".into()])).is_empty());
        let problems = policy.residency_problems(text, &topology(), &eu(vec!["internal".into()]));
        assert!(problems.len() == 1 && problems[0].message.contains("\"hard\".route"), "{problems:?}");
    }

    #[test]
    fn a_rule_matching_a_requested_model_still_applies_after_a_tenants_catch_all() {
        let eu = vec![TenantProfile { name: "acme".into(), residency: vec!["eu".into()], ..TenantProfile::default() }];
        // The first rule takes acme's `auto` requests; one naming gpt-4o still reaches the second.
        let text = "[[rule]]\nname = \"acme\"\nwhen.tenant = [\"acme\"]\nroute = \"azure/gpt-4o\"\n\n[[rule]]\nname = \"named\"\nwhen.requested_model = \"*gpt-4o\"\nroute = \"openai/gpt-4o\"\n\n[[rule]]\nname = \"default\"\nroute = \"openai/gpt-4o\"\n";
        let problems = Policy::parse(text).unwrap().residency_problems(text, &topology(), &eu);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("\"named\".route"), "{problems:?}");
    }

    #[test]
    fn warns_about_rules_relying_on_the_guard() {
        let text = "[[rule]]\nname = \"hard\"\nroute = \"openai/gpt-4o\"\n[[rule]]\nname = \"r\"\nredact = true\nroute = \"openai/gpt-4o\"\n";
        let warnings = Policy::parse(text).unwrap().guard_warnings(&topology());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"hard\".route") && warnings[0].contains("are rerouted"), "{warnings:?}");
        // Without a local engine or a trusted fallback there is nowhere to reroute them to.
        let remote_only = Topology::new().with_remote("openai/gpt-4o", Some("us-east"), false).with_remote("azure/gpt-4o", Some("eu-west"), true);
        let warnings = Policy::parse(text).unwrap().guard_warnings(&remote_only);
        assert!(warnings[0].contains("rejected (403: no trusted fallback and no local engine"), "{warnings:?}");
        let rescued = "[[rule]]\nname = \"hard\"\nroute = \"openai/gpt-4o\"\nfallback = [\"azure/gpt-4o\"]\n";
        let warnings = Policy::parse(rescued).unwrap().guard_warnings(&remote_only);
        assert!(warnings[0].contains("are rerouted"), "{warnings:?}");
        // A spill target is checked too: tagged requests are never spilled to it.
        let spills = "[[rule]]\nname = \"easy\"\nroute = \"local\"\nspill = \"openai/gpt-4o\"\n";
        let warnings = Policy::parse(spills).unwrap().guard_warnings(&topology());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"easy\".spill") && warnings[0].contains("never spilled"), "{warnings:?}");
        let redacted = spills.replace("spill =", "redact = true\nspill =");
        assert!(Policy::parse(&redacted).unwrap().guard_warnings(&topology()).is_empty());
    }
}
