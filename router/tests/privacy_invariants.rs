//! Property test over random configurations, policies and requests: whatever the rules say, no
//! decision targets a region outside the tenant's residency or a model outside its `models`, and
//! no privacy-tagged request reaches
//! an untrusted provider unless it is redacted (and redaction never covers unscannable content,
//! nor a tag the caller or the tenant gave).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proptest::prelude::*;
use router::{model_allowed, region_allowed, LocalOverload, Policy, RouteInput, Router, SpillReason, Topology};

const REGIONS: &[&str] = &["eu-west", "eu-central", "us-east", "us-west", "ap-south"];
const RESIDENCIES: &[&[&str]] = &[&[], &["eu"], &["us"], &["eu", "us"], &["eu-west"], &["ap"]];
const PII_KINDS: &[&str] = &["email", "phone", "iban", "unscannable"];
const MODEL_LISTS: &[&[&str]] = &[&[], &[], &["local"], &["p0/m"], &["p1/*", "local"], &["p*"]];

#[derive(Debug, Clone)]
struct Remote {
    target: String,
    region: Option<&'static str>,
    trusted: bool,
}

#[derive(Debug, Clone)]
struct Case {
    local_region: &'static str,
    remotes: Vec<Remote>,
    policy: String,
    residency: Vec<String>,
    models: Vec<String>,
    tags: Vec<String>,
    pii: BTreeMap<String, u32>,
    model: Option<usize>,
    text: &'static str,
    budget_exhausted: bool,
    overloaded: bool,
}

fn remote() -> impl Strategy<Value = (Option<&'static str>, bool)> {
    (prop::option::weighted(0.9, prop::sample::select(REGIONS)), any::<bool>())
}

fn rule_toml(i: usize, targets: &[String], parts: (u8, u8, bool, bool, Vec<usize>, usize)) -> String {
    let (when, complexity, redact, reject, fallbacks, route) = parts;
    let route_target = &targets[route % targets.len()];
    let mut out = format!("[[rule]]\nname = \"r{i}\"\n");
    match when % 4 {
        0 => out.push_str("when.privacy = [\"pii\", \"confidential\"]\n"),
        1 => out.push_str("when.tenant = [\"acme\"]\n"),
        2 => out.push_str("when.requested_model = \"*\"\n"),
        _ => {}
    }
    match complexity % 3 {
        0 => out.push_str("when.complexity = \"hard\"\n"),
        1 => out.push_str("when.complexity = \"easy\"\n"),
        _ => {}
    }
    let _ = writeln!(out, "route = \"{}\"", targets[route % targets.len()]);
    let fb: Vec<String> = fallbacks.iter().map(|f| format!("\"{}\"", targets[f % targets.len()])).collect();
    let _ = writeln!(out, "fallback = [{}]", fb.join(", "));
    let _ = writeln!(out, "redact = {redact}");
    if reject {
        out.push_str("on_violation = \"reject\"\n");
    }
    // Only rules routing to the local engine may spill (a static check); the spill target is
    // picked from the same draw as the rule's shape.
    if route_target == "local" && when % 2 == 0 {
        let _ = writeln!(out, "spill = \"{}\"", targets[(usize::from(complexity) + i) % targets.len()]);
    }
    out
}

fn case() -> impl Strategy<Value = Case> {
    (prop::sample::select(REGIONS), prop::collection::vec(remote(), 1..5)).prop_flat_map(|(local_region, remotes)| {
        let remotes: Vec<Remote> = remotes
            .into_iter()
            .enumerate()
            .map(|(i, (region, trusted))| Remote { target: format!("p{i}/m"), region, trusted })
            .collect();
        let mut targets: Vec<String> = remotes.iter().map(|r| r.target.clone()).collect();
        targets.push("local".to_owned());
        let rule = (any::<u8>(), any::<u8>(), any::<bool>(), any::<bool>(), prop::collection::vec(0..8_usize, 0..3), 0..8_usize);
        (
            Just(local_region),
            Just(remotes),
            prop::collection::vec(rule, 0..5),
            (0..8_usize, any::<bool>(), any::<bool>()),
            (prop::sample::select(RESIDENCIES), prop::sample::select(MODEL_LISTS)),
            prop::collection::vec(prop::sample::select(&["confidential", "pii", "internal"][..]), 0..2),
            prop::collection::btree_map(prop::sample::select(PII_KINDS).prop_map(str::to_owned), 1..3_u32, 0..3),
            prop::option::of(0..8_usize),
            prop::sample::select(&["Hi", "Prove step by step that the algorithm's complexity is optimal; x^2 = y = z."][..]),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(move |(local_region, remotes, rules, last, (residency, models), tags, pii, model, text, (budget_exhausted, overloaded))| {
                let mut policy = String::from(if last.1 { "on_violation = \"reject\"\n" } else { "on_violation = \"reroute\"\n" });
                for (i, parts) in rules.into_iter().enumerate() {
                    policy.push_str(&rule_toml(i, &targets, parts));
                }
                policy.push_str(&rule_toml(99, &targets, (3, 2, last.2, false, vec![last.0 + 1], last.0)));
                Case {
                    local_region,
                    remotes,
                    policy,
                    residency: residency.iter().map(|r| (*r).to_owned()).collect(),
                    models: models.iter().map(|m| (*m).to_owned()).collect(),
                    tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                    pii,
                    model,
                    text,
                    budget_exhausted,
                    overloaded,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_decision_breaks_residency_or_privacy(case in case()) {
        let mut topology = Topology::new().with_local("local/small", case.local_region);
        for r in &case.remotes {
            topology = topology.with_remote(&r.target, r.region, r.trusted);
        }
        let policy = Policy::parse(&case.policy).expect("generated policies parse");
        let router = Router::new(policy, topology.clone());
        let requested = case.model.map_or_else(|| "auto".to_owned(), |i| {
            case.remotes.get(i).map_or_else(|| "local/small".to_owned(), |r| r.target.clone())
        });
        let input = RouteInput {
            requested_model: &requested,
            resolved_model: (requested != "auto").then_some(requested.as_str()),
            tenant: "acme",
            residency: &case.residency,
            models: &case.models,
            tags: case.tags.clone(),
            pii: case.pii.clone(),
            text: case.text,
            turns: 1,
            prompt_tokens: 20,
            has_tools: false,
            unavailable: &[],
            budget_used: 0.0,
            budget_exhausted: case.budget_exhausted,
            local_overload: case.overloaded.then(|| LocalOverload { reason: SpillReason::Ttft, detail: "test".into() }),
            stream: false,
        };
        let d = router.decide(&input);
        if d.violation.is_none() {
            let tagged = !case.tags.is_empty() || !case.pii.is_empty();
            let unscannable = case.pii.contains_key("unscannable");
            for target in std::iter::once(&d.target).chain(&d.fallbacks) {
                let info = topology.get(target).expect("decisions name configured targets");
                prop_assert!(region_allowed(&case.residency, info.region.as_deref()),
                    "{target} ({:?}) outside {:?}\n{}\n{d:?}", info.region, case.residency, case.policy);
                prop_assert!(model_allowed(&case.models, target), "{target} not among {:?}\n{}\n{d:?}", case.models, case.policy);
                if tagged && !info.trusted {
                    // Redaction lifts PII only: a tag from the caller or tenant never leaves untrusted.
                    prop_assert!(d.redact && !unscannable && case.tags.is_empty(),
                        "privacy-tagged request to untrusted {target} unredacted\n{}\n{d:?}", case.policy);
                }
            }
            if d.spilled.is_some() {
                // Spilling is stricter than the guard: a tagged request leaves only redacted.
                prop_assert!(!(!case.tags.is_empty() || !case.pii.is_empty()) || (d.redact && !unscannable && case.tags.is_empty()), "{d:?}");
                prop_assert!(case.overloaded && !case.budget_exhausted, "{d:?}");
                prop_assert!(d.fallbacks.first().map(String::as_str) == Some("local/small"), "{d:?}");
            }
            if case.budget_exhausted {
                // An exhausted budget never falls back to a paid target; the target itself stays
                // remote only when the guard forbids the local engine, or the request has media
                // the text-only engine cannot read (the gateway then refuses it for the budget).
                prop_assert!(d.fallbacks.iter().all(|t| t == "local/small"), "{d:?}");
                if d.target != "local/small" {
                    prop_assert!(d.reasons.iter().any(|r| r.contains("local engine not allowed") || (unscannable && r.contains("reads text only"))), "{d:?}");
                }
            }
        } else {
            prop_assert!(d.reasons.iter().any(|r| r.contains("rejected")));
        }
    }
}
