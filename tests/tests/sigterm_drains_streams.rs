//! SIGTERM lets an in-flight stream finish, then the process exits 0; while it drains, probes
//! get `/readyz` 503 and new requests 503 `shutting_down` (not a refused connection), and
//! `/metrics` is still scraped.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, Gateway, SseReader, ALL_LOCAL_POLICY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_finishes_that_stream_then_exits_zero() {
    let mut gw = Gateway::start(&config_with_local(2, 4096, ""), ALL_LOCAL_POLICY).await;
    let body = json!({
        "model": "auto", "stream": true, "temperature": 0, "max_tokens": 256,
        // No end-of-text or end-of-turn token: the stream runs its 256 tokens, long enough to
        // probe the drain.
        "logit_bias": {"0": -100, "2": -100},
        "messages": [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
    });
    let response = reqwest::Client::new().post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    reader.next_data(Duration::from_secs(30)).await.expect("first chunk");

    let status = std::process::Command::new("kill").arg("-TERM").arg(gw.process.pid().to_string()).status().unwrap();
    assert!(status.success());

    // Fresh connections while the stream drains: /readyz turns 503 once the signal is handled.
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let r = fresh().get(format!("{}/readyz", gw.base)).send().await.expect("the port answers while draining");
        if r.status() == 503 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(readyz["status"], "draining", "{readyz}");
    let refused = fresh().post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.expect("answered");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "shutting_down", "{error}");
    // Prometheus still scrapes: what finishes during the drain must reach it.
    let metrics = fresh().get(format!("{}/metrics", gw.base)).send().await.expect("answered");
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "switchyard_engine_active_sequences 1"), "{metrics}");

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
