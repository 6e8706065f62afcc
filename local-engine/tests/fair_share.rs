//! Tenants share the engine fairly: a slot goes to the tenant running fewest, and a full queue
//! gives a place to a tenant holding less of the engine (running and waiting) than another.

mod common;

use common::{engine_with, greedy, user};
use futures::FutureExt;
use local_engine::{EngineError, EngineHandle, GenerationEvent, GenerationRequest, GenerationStream, Tenant};

fn request(tenant: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest { messages: user("Count from 1 to 500."), tools: None, sampling: greedy(max_tokens), raw_prompt: None, tenant: Some(Tenant::named(tenant)) }
}

/// An engine of one slot and `queue` places, its slot held by a long request of tenant "batch"
/// (generating) and four more of batch's waiting.
async fn busy_with_batch(queue: usize) -> (EngineHandle, GenerationStream, Vec<GenerationStream>) {
    let engine = engine_with(2048, 1, queue);
    // Idle when the first request comes: it is admitted from a wait for work.
    engine.started().await.unwrap();
    let mut running = engine.submit(request("batch", 1000)).unwrap();
    while !matches!(running.recv().await, Some(GenerationEvent::Text(_))) {}
    let backlog = (0..4).map(|_| engine.submit(request("batch", 4)).unwrap()).collect();
    (engine, running, backlog)
}

/// Reads `stream` to its end; true if it finished normally.
async fn finishes(stream: &mut GenerationStream) -> bool {
    let mut finished = false;
    while let Some(event) = stream.recv().await {
        assert!(!matches!(event, GenerationEvent::Failed(_)), "{event:?}");
        finished |= matches!(event, GenerationEvent::Finished { .. });
    }
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_tenant_is_served_before_another_tenants_backlog() {
    let (engine, running, mut backlog) = busy_with_batch(8).await;
    let mut late = engine.submit(request("chat", 4)).unwrap();
    drop(running);
    // One slot: whatever starts next runs alone to its end. So once the backlog's first has
    // started, "chat" must have had its turn already, and every event of it been sent.
    assert!(matches!(backlog[0].recv().await, Some(GenerationEvent::Started { .. })));
    let mut events = Vec::new();
    while let Some(Some(event)) = late.recv().now_or_never() {
        events.push(event);
    }
    assert!(matches!(events.last(), Some(GenerationEvent::Finished { .. })), "the late tenant's request had not run before the backlog: {events:?}");
    for stream in &mut backlog {
        assert!(finishes(stream).await);
    }
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.active, stats.displaced_total), (0, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gives_a_place_to_a_tenant_holding_less() {
    let (engine, running, mut backlog) = busy_with_batch(4).await;
    assert!(matches!(engine.submit(request("batch", 4)), Err(EngineError::Overloaded { queue: 4 })), "batch holds every place");
    let mut chat = vec![engine.submit(request("chat", 4)).expect("chat holds nothing: it takes batch's newest place")];
    // Refused as it would have been had it come last.
    assert!(matches!(backlog[3].recv().await, Some(GenerationEvent::Failed(EngineError::Displaced { queue: 4 }))));
    chat.push(engine.submit(request("chat", 4)).expect("one place against three: another"));
    assert!(matches!(backlog[2].recv().await, Some(GenerationEvent::Failed(EngineError::Displaced { queue: 4 }))));
    assert!(matches!(engine.submit(request("chat", 4)), Err(EngineError::Overloaded { .. })), "batch runs one and waits two: a third for chat would not be fairer");
    assert!(matches!(engine.submit(request("batch", 4)), Err(EngineError::Overloaded { .. })));
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.displaced_total), (4, 2), "{stats:?}");
    drop(running);
    for stream in chat.iter_mut().chain(&mut backlog[..2]) {
        assert!(finishes(stream).await);
    }
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.active), (0, 0), "{stats:?}");
}
