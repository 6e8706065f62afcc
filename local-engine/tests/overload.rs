//! With a tiny queue, excess requests are refused at once and every accepted one completes.

mod common;

use common::{engine_with, user};
use local_engine::{EngineError, GenerationEvent, GenerationRequest, SamplingParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_requests_get_overloaded_and_accepted_ones_finish() {
    let engine = engine_with(2048, 1, 2);
    let request = || GenerationRequest {
        messages: user("Say hello."),
        tools: None,
        sampling: SamplingParams { temperature: 0.0, max_tokens: Some(8), ..SamplingParams::default() },
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match engine.submit(request()) {
            Ok(stream) => accepted.push(stream),
            Err(EngineError::Overloaded { queue }) => {
                assert_eq!(queue, 2);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    // One slot, two queued places (plus whatever the engine already took): most are refused.
    assert!(refused >= 8, "only {refused} of 12 refused");
    for mut stream in accepted {
        let mut finished = false;
        while let Some(event) = stream.recv().await {
            if matches!(event, GenerationEvent::Finished { .. }) {
                finished = true;
            }
            assert!(!matches!(event, GenerationEvent::Failed(_)), "{event:?}");
        }
        assert!(finished);
    }
    assert_eq!(engine.stats().queued, 0);
}
