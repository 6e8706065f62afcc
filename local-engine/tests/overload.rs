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
        raw_prompt: None,
        tenant: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_running_and_queued_generations_and_refuses_new_ones() {
    let engine = engine_with(2048, 1, 4);
    let long = || GenerationRequest {
        messages: user("Count from 1 to 500."),
        tools: None,
        sampling: SamplingParams { temperature: 0.0, max_tokens: Some(1000), ..SamplingParams::default() },
        raw_prompt: None,
        tenant: None,
    };
    let mut running = engine.submit(long()).unwrap();
    assert!(matches!(running.recv().await, Some(GenerationEvent::Started { .. })));
    let mut queued = engine.submit(long()).unwrap();
    tokio::task::block_in_place(|| engine.shutdown());
    let mut last = None;
    while let Some(event) = running.recv().await {
        last = Some(event);
    }
    assert!(matches!(last, Some(GenerationEvent::Failed(EngineError::Unavailable { .. }))), "{last:?}");
    assert!(matches!(queued.recv().await, Some(GenerationEvent::Failed(EngineError::Unavailable { .. }))));
    assert!(engine.submit(long()).is_err(), "a stopped engine refuses work");
    let stats = engine.stats();
    assert_eq!((stats.active, stats.queued), (0, 0), "{stats:?}");
}

/// `queue` bounds the requests waiting for a slot: requests that free slots will take are never
/// refused, however many arrive at once (they used to fill the one-place queue while the engine
/// was in a step, and the rest got 429 with seven slots free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_free_slots_are_not_counted_against_the_queue() {
    let engine = engine_with(8192, 8, 1);
    let request = || GenerationRequest {
        messages: user("Count from 1 to 100."),
        tools: None,
        sampling: SamplingParams { temperature: 0.0, max_tokens: Some(200), ..SamplingParams::default() },
        raw_prompt: None,
        tenant: None,
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    // Submitted back to back: far faster than a step, so none of these finishes meanwhile.
    for _ in 0..10 {
        match engine.submit(request()) {
            Ok(stream) => accepted.push(stream),
            Err(EngineError::Overloaded { .. }) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted.len(), refused), (9, 1), "eight slots and one queued place");
    drop(accepted);
}

/// A request whose client leaves while it waits for a slot gives its place back at once: the
/// queue never fills with requests nobody waits for (they used to hold their places until the
/// engine reached them, and new requests got 429 meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_while_queued_gives_its_place_back_at_once() {
    let engine = engine_with(2048, 1, 2);
    let request = |max_tokens| GenerationRequest {
        messages: user("Count from 1 to 500."),
        tools: None,
        sampling: SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ..SamplingParams::default() },
        raw_prompt: None,
        tenant: None,
    };
    let mut running = engine.submit(request(1000)).unwrap();
    // Generating: it holds the one slot.
    while !matches!(running.recv().await, Some(GenerationEvent::Text(_))) {}
    let queued: Vec<_> = (0..2).map(|_| engine.submit(request(1000)).unwrap()).collect();
    assert!(matches!(engine.submit(request(4)), Err(EngineError::Overloaded { .. })), "the slot is busy and both places are taken");
    assert_eq!(engine.stats().queued, 2);
    drop(queued);
    assert_eq!(engine.stats().queued, 0, "their places are free as soon as their clients leave");
    let mut next: Vec<_> = (0..2).map(|_| engine.submit(request(4)).expect("a place given back")).collect();
    drop(running);
    for stream in &mut next {
        let mut finished = false;
        while let Some(event) = stream.recv().await {
            assert!(!matches!(event, GenerationEvent::Failed(_)), "{event:?}");
            finished |= matches!(event, GenerationEvent::Finished { .. });
        }
        assert!(finished);
    }
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.active), (0, 0), "{stats:?}");
    assert_eq!(stats.cancelled_total, 3, "the two that left and the one dropped while running");
}
