//! Spillover: a request its rule serves locally leaves for the rule's `spill` target when the
//! local engine is overloaded, and only if it may leave.

use router::{LocalOverload, Policy, RouteInput, Router, SpillReason, Tier, Topology};

const POLICY: &str = r#"
[[rule]]
name = "redacting"
when.tenant = ["redactor"]
route = "local"
spill = "openai/gpt-4o-mini"
redact = true

[[rule]]
name = "eu-only"
when.tenant = ["eu"]
route = "local"
spill = "openai/gpt-4o-mini"

[[rule]]
name = "no-spill"
when.tenant = ["steady"]
route = "local"

[[rule]]
name = "easy-local"
route = "local"
fallback = ["anthropic/claude-sonnet"]
spill = "openai/gpt-4o-mini"
"#;

fn router() -> Router {
    let topology = Topology::new()
        .with_local("local/local-small", "eu-west")
        .with_remote("openai/gpt-4o-mini", Some("us-east"), false)
        .with_remote("anthropic/claude-sonnet", Some("eu-central"), true);
    Router::new(Policy::parse(POLICY).unwrap(), topology)
}

fn overload(reason: SpillReason) -> LocalOverload {
    LocalOverload { reason, detail: "predicted TTFT 1500 ms > SLO 800 ms".into() }
}

fn input<'a>(tenant: &'a str, residency: &'a [String]) -> RouteInput<'a> {
    RouteInput {
        requested_model: "auto",
        tenant,
        residency,
        text: "Say hello",
        turns: 1,
        prompt_tokens: 3,
        local_overload: Some(overload(SpillReason::Ttft)),
        ..RouteInput::default()
    }
}

#[test]
fn not_overloaded_stays_local() {
    let mut i = input("anyone", &[]);
    i.local_overload = None;
    let d = router().decide(&i);
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
}

#[test]
fn overloaded_spills_with_local_first_among_fallbacks() {
    let d = router().decide(&input("anyone", &[]));
    assert_eq!(d.target, "openai/gpt-4o-mini");
    assert_eq!(d.tier, Tier::Remote);
    assert_eq!(d.spilled, Some(SpillReason::Ttft));
    assert_eq!(d.fallbacks, ["local/local-small", "anthropic/claude-sonnet"]);
    assert!(d.reasons.iter().any(|r| r.contains("spilled to \"openai/gpt-4o-mini\"") && r.contains("SLO 800 ms")), "{:?}", d.reasons);
    assert!(!d.rerouted);
}

#[test]
fn each_reason_is_carried() {
    for reason in [SpillReason::Ttft, SpillReason::DecodeRate, SpillReason::Queue] {
        let mut i = input("anyone", &[]);
        i.local_overload = Some(overload(reason));
        assert_eq!(router().decide(&i).spilled, Some(reason));
    }
}

#[test]
fn privacy_tagged_requests_never_spill_without_redaction() {
    let mut tagged = input("anyone", &[]);
    tagged.tags = vec!["confidential".into()];
    let d = router().decide(&tagged);
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
    assert!(d.reasons.iter().any(|r| r.contains("not spilled") && r.contains("privacy")), "{:?}", d.reasons);

    let mut pii = input("anyone", &[]);
    pii.pii.insert("email".into(), 1);
    assert_eq!(router().decide(&pii).spilled, None);
}

#[test]
fn a_redacting_rule_may_spill_tagged_requests_but_not_unscannable_ones() {
    let mut pii = input("redactor", &[]);
    pii.pii.insert("email".into(), 1);
    let d = router().decide(&pii);
    assert_eq!(d.spilled, Some(SpillReason::Ttft));
    assert!(d.redact);

    pii.pii.insert("unscannable".into(), 1);
    assert_eq!(router().decide(&pii).spilled, None);
}

#[test]
fn residency_keeps_requests_home() {
    let eu = vec!["eu".to_owned()];
    let d = router().decide(&input("eu", &eu));
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
    assert!(d.reasons.iter().any(|r| r.contains("not spilled") && r.contains("residency")), "{:?}", d.reasons);
}

#[test]
fn exhausted_budget_keeps_requests_home() {
    let mut i = input("anyone", &[]);
    i.budget_exhausted = true;
    let d = router().decide(&i);
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
}

#[test]
fn open_circuit_on_the_spill_target_keeps_requests_home() {
    let open = vec!["openai/gpt-4o-mini".to_owned()];
    let mut i = input("anyone", &[]);
    i.unavailable = &open;
    let d = router().decide(&i);
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
}

#[test]
fn rules_without_spill_wait_in_the_queue() {
    let d = router().decide(&input("steady", &[]));
    assert_eq!(d.target, "local/local-small");
    assert_eq!(d.spilled, None);
}
