//! `strategy = "cascade"`: the decision carries the keep threshold when the local engine may
//! answer first, and says why not otherwise.

use router::{LocalOverload, Policy, RouteInput, Router, SpillReason, Tier, Topology};

const POLICY: &str = r#"
[classifier]
cascade_min_logprob = -0.8

[[rule]]
name = "cascade"
route = "openai/gpt-4o"
strategy = "cascade"
"#;

fn router(local_region: &str) -> Router {
    let topology = Topology::new().with_local("local/local-small", local_region).with_remote("openai/gpt-4o", Some("eu-west"), true);
    Router::new(Policy::parse(POLICY).unwrap(), topology)
}

fn input(residency: &[String]) -> RouteInput<'_> {
    RouteInput { requested_model: "auto", tenant: "t", residency, text: "What is 2 + 2?", turns: 1, prompt_tokens: 4, ..RouteInput::default() }
}

#[test]
fn a_remote_route_cascades_with_the_policy_threshold() {
    let d = router("eu-west").decide(&input(&[]));
    assert_eq!(d.target, "openai/gpt-4o");
    assert_eq!(d.tier, Tier::Remote);
    assert_eq!(d.cascade, Some(-0.8));
    assert!(d.reasons.iter().any(|r| r.contains("cascade: the local engine answers first")), "{:?}", d.reasons);
}

#[test]
fn no_cascade_where_the_local_engine_may_not_serve() {
    let eu = vec!["eu".to_owned()];
    let d = router("us-east").decide(&input(&eu));
    assert_eq!(d.cascade, None);
    assert!(d.reasons.iter().any(|r| r.contains("cascade skipped") && r.contains("residency")), "{:?}", d.reasons);
}

#[test]
fn no_cascade_when_the_budget_is_exhausted_or_without_an_engine() {
    let mut i = input(&[]);
    i.budget_exhausted = true;
    // The budget keeps the request local altogether: nothing to cascade to.
    assert_eq!(router("eu-west").decide(&i).cascade, None);
    let remote_only = Router::new(Policy::parse(POLICY).unwrap(), Topology::new().with_remote("openai/gpt-4o", Some("eu-west"), true));
    assert_eq!(remote_only.decide(&input(&[])).cascade, None);
}

#[test]
fn no_cascade_for_a_stream() {
    let d = router("eu-west").decide(&RouteInput { stream: true, ..input(&[]) });
    assert_eq!((d.target.as_str(), d.cascade), ("openai/gpt-4o", None));
    assert!(d.reasons.iter().any(|r| r.contains("cascade skipped: a streamed request")), "{:?}", d.reasons);
}

#[test]
fn no_cascade_for_media_the_local_engine_cannot_read() {
    let mut i = input(&[]);
    i.pii.insert("unscannable".to_owned(), 1);
    let d = router("eu-west").decide(&i);
    assert_eq!((d.target.as_str(), d.cascade), ("openai/gpt-4o", None));
    assert!(d.reasons.iter().any(|r| r.contains("cascade skipped") && r.contains("text only")), "{:?}", d.reasons);
}

#[test]
fn no_cascade_while_the_local_engine_is_overloaded() {
    let overload = LocalOverload { reason: SpillReason::Ttft, detail: "predicted TTFT 1200 ms > SLO 300 ms".into() };
    let d = router("eu-west").decide(&RouteInput { local_overload: Some(overload), ..input(&[]) });
    assert_eq!((d.target.as_str(), d.cascade, d.spilled), ("openai/gpt-4o", None, None));
    assert!(d.reasons.iter().any(|r| r.contains("cascade skipped: local engine overloaded (predicted TTFT 1200 ms")), "{:?}", d.reasons);
}
