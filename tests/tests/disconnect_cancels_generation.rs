//! A client that goes away mid-stream stops its generation.

use std::time::Duration;

use serde_json::json;
use switchyard_e2e::{config_with_local, Gateway, SseReader, ALL_LOCAL_POLICY};

#[tokio::test]
async fn disconnect_mid_stream_cancels_the_sequence_and_frees_the_engine() {
    let gw = Gateway::start(&config_with_local(2, 8192, ""), ALL_LOCAL_POLICY).await;
    let body = json!({
        "model": "auto", "stream": true, "temperature": 0, "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
    });
    let response = reqwest::Client::new().post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    for _ in 0..3 {
        reader.next_data(Duration::from_secs(30)).await.expect("a chunk before disconnecting");
    }
    let during = gw.engine_stats().await;
    assert_eq!(during["active"], 1, "{during}");
    drop(reader);

    // Wait for the engine to notice, bounded: the condition, not a sleep, ends the wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = gw.engine_stats().await;
        if stats["active"] == 0 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "sequence still active after disconnect: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["cancelled_total"], 1, "{stats}");
    assert_eq!(stats["finished_total"], 0, "the generation must be cancelled, not run to its end: {stats}");
    assert_eq!(stats["kv_cells_used"], 0, "{stats}");
    assert!(stats["completion_tokens_total"].as_u64().unwrap() < 2000, "{stats}");
}
