//! SIGTERM lets an in-flight stream finish, then the process exits 0.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, Gateway, SseReader, ALL_LOCAL_POLICY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_finishes_that_stream_then_exits_zero() {
    let mut gw = Gateway::start(&config_with_local(2, 4096, ""), ALL_LOCAL_POLICY).await;
    let body = json!({
        "model": "auto", "stream": true, "temperature": 0, "max_tokens": 48,
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}]
    });
    let response = reqwest::Client::new().post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    reader.next_data(Duration::from_secs(30)).await.expect("first chunk");

    let status = std::process::Command::new("kill").arg("-TERM").arg(gw.process.pid().to_string()).status().unwrap();
    assert!(status.success());

    let mut finish_reason = None;
    let mut done = false;
    while let Some(data) = reader.next_data(Duration::from_secs(30)).await {
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        assert!(chunk.get("error").is_none(), "the stream was cut: {chunk}");
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish_reason = Some(reason.to_owned());
        }
    }
    assert!(done, "the stream ended without [DONE]");
    assert!(matches!(finish_reason.as_deref(), Some("stop" | "length")), "{finish_reason:?}");
    let code = tokio::task::block_in_place(|| gw.process.wait_exit(Duration::from_secs(40)));
    assert_eq!(code, Some(0), "switchyard must exit 0 after draining");
}
