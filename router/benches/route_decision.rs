//! Full classification and decision (PII scan, features, complexity, policy, guard) on a 2 KB
//! prompt and on a ~200-token prompt. Criterion measures the means; a second pass times single
//! calls and prints p50/p99/max, the figures the router's budget is stated in.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use router::{pii_counts, scan_pii, Policy, RouteInput, Router, Topology};

const POLICY: &str = include_str!("../../policies/hybrid.toml");

fn router() -> Router {
    let topology = Topology::new()
        .with_local("local/local-small", "eu-west")
        .with_remote("openai/gpt-4o", Some("us-east"), false)
        .with_remote("anthropic/claude-sonnet", Some("us-east"), false);
    Router::new(Policy::parse(POLICY).expect("hybrid policy parses"), topology)
}

/// A typical request: an engineering question in prose with a code block, one e-mail address
/// and a version number.
fn typical_prompt(bytes: usize) -> String {
    let paragraphs = [
        "We are migrating our billing service from a monolith to a set of smaller services and I would like a second opinion on the design before we commit to it. ",
        "The current code keeps every invoice in memory while it renders the monthly statements, which worked for a few thousand customers but now takes most of the night. ",
        "Here is the function that dominates the profile:\n```python\ndef render(statements):\n    for s in statements:\n        pdf = build(s)\n        store(pdf)\n```\n",
        "Would it be better to stream the statements through a queue, or to shard the job by customer region and run the shards in parallel? ",
        "Please explain the trade-offs in terms of failure handling, cost and how hard each option is to operate, and tell me what you would measure first. ",
        "If you need more context, the team lead is reachable at dana.whitfield@example.org and we run version 4.2 of the scheduler. ",
    ];
    fill(&paragraphs, bytes)
}

fn fill(paragraphs: &[&str], bytes: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(paragraphs[i % paragraphs.len()]);
        i += 1;
    }
    text.truncate(bytes);
    while !text.is_char_boundary(text.len()) {
        text.pop();
    }
    text
}

/// The worst case we expect: a support message dense with PII and look-alike numbers (orders,
/// dates, prices, versions, ISBNs, tracking codes), each of which the scanner must check.
fn dense_prompt(bytes: usize) -> String {
    let paragraphs = [
        "Hello, I am writing about order #4839201 placed on 15.03.2024 for 1.234,56 EUR. ",
        "Please send the invoice INV-000123 to jane.doe@example.com or call me on +44 20 7946 0958. ",
        "Our build uses v2.13.4 of the SDK and Python 3.11.7; the ISBN 978-3-16-148410-0 is unrelated. ",
        "Could you explain why this function is slow and how to optimize the algorithm?\n```rust\nfn sum(v: &[u64]) -> u64 { v.iter().sum() }\n```\n",
        "Tracking code 1Z999AA10123456784, meeting at 10:30 in room 204, 25% discount applies. ",
        "My IBAN is DE89 3704 0044 0532 0130 00 for the refund. ",
    ];
    fill(&paragraphs, bytes)
}

fn prompts() -> [(&'static str, String); 4] {
    [
        ("typical 2 KB", typical_prompt(2048)),
        ("typical 200 tokens", typical_prompt(800)),
        ("dense 2 KB", dense_prompt(2048)),
        ("dense 200 tokens", dense_prompt(800)),
    ]
}

/// What the gateway does per request: scan, count, decide.
fn classify_and_decide(router: &Router, text: &str) -> router::Decision {
    let pii = pii_counts(&scan_pii(text));
    let residency: Vec<String> = Vec::new();
    let input = RouteInput {
        requested_model: "auto",
        resolved_model: None,
        tenant: "default",
        residency: &residency,
        models: &[],
        tags: Vec::new(),
        pii,
        text,
        turns: 2,
        prompt_tokens: u32::try_from(text.len() / 4).unwrap_or(u32::MAX),
        has_tools: false,
        unavailable: &[],
        budget_used: 0.0,
        budget_exhausted: false,
        local_overload: None,
        stream: false,
    };
    router.decide(&input)
}

/// The shipped learned scorer (`router/model/complexity.json`).
fn learned() -> router::learned::LearnedScorer {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/model/complexity.json")).expect("router/model/complexity.json (make router-model)");
    router::learned::LearnedScorer::from_json(&text).expect("a valid model")
}

fn learned_score(scorer: &router::learned::LearnedScorer, text: &str) -> f64 {
    use router::ComplexityScorer as _;
    let features = router::features(text, 1, false);
    scorer.score(text, &features, 512).score
}

/// The decision alone on a short prompt, for a tenant with `models` (the guard's extra check on
/// every target it considers) and without.
fn decide_for(router: &Router, models: &[String]) -> router::Decision {
    let input = RouteInput { requested_model: "auto", tenant: "interns", models, text: "Hi there", turns: 1, prompt_tokens: 2, ..RouteInput::default() };
    router.decide(&input)
}

fn bench(c: &mut Criterion) {
    let scorer = learned();
    let router = router();
    let none: Vec<String> = Vec::new();
    let three: Vec<String> = ["local", "anthropic/*", "openai/gpt-4o-mini"].map(str::to_owned).to_vec();
    c.bench_function("decide/tenant without models", |b| b.iter(|| decide_for(&router, black_box(&none))));
    c.bench_function("decide/tenant with three models", |b| b.iter(|| decide_for(&router, black_box(&three))));
    let long = typical_prompt(2048);
    c.bench_function("learned_scorer/512 tokens", |b| b.iter(|| learned_score(&scorer, black_box(&long))));
    let mixed = scorer.clone().with_baseline_weight(0.5).expect("the shipped model records its quantiles");
    c.bench_function("learned_scorer/512 tokens, baseline_weight 0.5", |b| b.iter(|| learned_score(&mixed, black_box(&long))));
    for (name, text) in prompts() {
        c.bench_function(&format!("classify_and_decide/{name}"), |b| b.iter(|| classify_and_decide(&router, black_box(&text))));
        c.bench_function(&format!("pii_scan/{name}"), |b| b.iter(|| scan_pii(black_box(&text))));
    }
}

/// Times 20,000 single calls of `call` and prints a table row with p50, p99 and max.
fn percentile_row(name: &str, mut call: impl FnMut()) {
    let mut times: Vec<f64> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            call();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |per_mille: usize| times[(times.len() - 1) * per_mille / 1000];
    println!("| {name} | {} | {:.2} | {:.2} | {:.2} |", times.len(), at(500), at(990), at(1000));
}

fn percentiles() {
    let router = router();
    println!("\n| prompt | calls | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|");
    for (name, text) in prompts() {
        percentile_row(name, || {
            black_box(classify_and_decide(&router, black_box(&text)));
        });
    }
    let scorer = learned();
    let long = typical_prompt(2048);
    percentile_row("learned scorer alone, 512 tokens (2 KB)", || {
        black_box(learned_score(&scorer, black_box(&long)));
    });
    let mixed = scorer.with_baseline_weight(0.5).expect("the shipped model records its quantiles");
    percentile_row("learned scorer, baseline_weight 0.5, 512 tokens (2 KB)", || {
        black_box(learned_score(&mixed, black_box(&long)));
    });
    println!();
    // Redact and restore a hostile request: thousands of placeholder-shaped words the author typed
    // and hundreds of values (each costs in proportion to the text, not its square).
    println!("| redact + restore | calls | p50 ms | max ms |\n|---|---|---|---|");
    for (words, values) in [(1000, 100), (4000, 200), (8000, 400)] {
        let typed: Vec<String> = (1..=words).map(|i| format!("<EMAIL_{i}>")).collect();
        let emails: Vec<String> = (0..values).map(|i| format!("u{i}@example.com")).collect();
        let text = format!("{} {}", typed.join(" "), emails.join(" "));
        let spans = scan_pii(&text);
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut redaction = router::Redaction::new();
                let redacted = redaction.redact(&text, &spans);
                black_box(redaction.restore(&redacted));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("| {words} typed placeholders, {values} values ({} KB) | 5 | {:.2} | {:.2} |", text.len() / 1024, times[2], times[4]);
    }
    println!();
}

criterion_group!(benches, bench);

fn main() {
    percentiles();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
