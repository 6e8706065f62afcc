//! Switchyard's batched `Q4_1` and `Q8_0` kernels (`local-engine/ggml-patches/`) in the real engine,
//! against ggml's own paths: the model answers the same prompts, eight at once on four slots (so
//! prompt steps, decode steps of several sequences and of one all run through it), with the
//! kernels on and with them off. The switch is read once per process, so each side runs in a child
//! process of this test. (The kernels' arithmetic is checked exactly in `src/kernels.rs`.)
//!
//! The two must not be bit-identical, which would mean the kernels never ran, and must choose the
//! same first token for each prompt with nearly the same log-probability. Later tokens are not
//! compared: ggml's own path rounds each block's activation sum to half precision (an error of
//! ~4e-5 of the products' magnitudes, where the kernels' integer sums are exact), and a 135M
//! model at 4 bits amplifies that much within a few tokens — measured, 2 of 8 answers stayed the
//! same for 32 tokens, and log-probabilities moved by up to 0.2 before the answers parted.

mod common;

use std::process::Command;

use common::{engine_with, generate, greedy, user};
use local_engine::{batched_kernels, SamplingParams};

const PROMPTS: [&str; 8] = [
    "Name three colours of the rainbow.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a compiler does.",
    "List four animals that live in the ocean.",
    "What is 12 plus 30?",
    "Give me a short tip for sleeping better.",
    "Translate 'good morning' into Spanish.",
];
const TOKENS: u32 = 32;
/// Set in the child processes: where to write their answers.
const CHILD_OUT: &str = "SWITCHYARD_BATCHED_KERNELS_TEST_OUT";

#[derive(serde::Serialize, serde::Deserialize)]
struct Side {
    kernel: bool,
    /// Per prompt, the generated tokens' bytes and log-probabilities.
    answers: Vec<Vec<(Vec<u8>, f32)>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_kernel_agrees_with_ggml_own_path() {
    if let Ok(out) = std::env::var(CHILD_OUT) {
        return answer_all(&out).await;
    }
    let on = run_side("1");
    let off = run_side("0");
    assert!(!off.kernel, "SWITCHYARD_BATCHED_KERNELS=0 switches the kernels off");
    if !on.kernel {
        eprintln!("skipped: this CPU takes ggml's own kernels (AMX, or no AVX2)");
        return;
    }

    let mut same_first = 0;
    let mut compared = 0;
    let mut bit_identical = 0;
    for (prompt, (a, b)) in PROMPTS.iter().zip(on.answers.iter().zip(&off.answers)) {
        let ((first_on, lp_on), (first_off, lp_off)) = (&a[0], &b[0]);
        if first_on == first_off {
            same_first += 1;
            assert!((lp_on - lp_off).abs() < 0.5, "{prompt:?}: first token's log-probability {lp_on} vs {lp_off}");
        }
        for ((_, la), (_, lb)) in a.iter().zip(b).take_while(|(x, y)| x.0 == y.0) {
            compared += 1;
            bit_identical += usize::from(la.to_bits() == lb.to_bits());
        }
    }
    assert!(same_first >= 7, "only {same_first} of 8 prompts start their answers with the same token");
    assert!(bit_identical < compared, "all {compared} log-probabilities are bit-identical: the kernels did not run");
}

fn run_side(switch: &str) -> Side {
    let out = std::env::temp_dir().join(format!("batched_kernels_{}_{switch}.json", std::process::id()));
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["batched_kernel_agrees_with_ggml_own_path", "--exact", "--nocapture"])
        .env(CHILD_OUT, &out)
        .env("SWITCHYARD_BATCHED_KERNELS", switch)
        .status()
        .expect("child runs");
    assert!(status.success(), "child with SWITCHYARD_BATCHED_KERNELS={switch} failed");
    let side = serde_json::from_slice(&std::fs::read(&out).expect("child wrote its answers")).expect("answers");
    std::fs::remove_file(&out).ok();
    side
}

async fn answer_all(out: &str) {
    let engine = engine_with(4096, 4, 16);
    let sampling = SamplingParams { top_logprobs: Some(0), ..greedy(TOKENS) };
    let answers = futures::future::join_all(PROMPTS.iter().map(|p| generate(&engine, user(p), sampling.clone()))).await;
    let answers = answers
        .into_iter()
        .map(|a| a.expect("answer").tokens.into_iter().map(|t| (t.bytes, t.logprob)).collect())
        .collect();
    let side = Side { kernel: batched_kernels(), answers };
    std::fs::write(out, serde_json::to_vec(&side).expect("json")).expect("write answers");
}
