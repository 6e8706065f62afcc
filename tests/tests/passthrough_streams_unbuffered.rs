//! The openai-compatible passthrough: streams unbuffered, forwards faithfully, keeps keys secret.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, FakeProvider, Gateway, SseReader, ALL_LOCAL_POLICY};

const SECRET: &str = "sk-test-very-secret-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_upstream_chunk_reaches_the_client_before_the_upstream_finishes() {
    let fake = FakeProvider::start();
    let config = config_with_local(1, 2048, &fake.provider_section(Some("FAKE_API_KEY")));
    let gw = Gateway::start_with_env(&config, ALL_LOCAL_POLICY, &[("FAKE_API_KEY", SECRET)]).await;
    let http = reqwest::Client::new();
    let body = json!({
        "model": "fake/gated", "stream": true,
        "messages": [{"role": "user", "content": "hello"}],
        "logit_bias": {"42": 1}, "user": "team-a", "metadata": {"k": "v"}
    });
    let response = http.post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-target"], "fake/gated");
    assert_eq!(response.headers()["x-switchyard-tier"], "remote");
    let mut reader = SseReader::new(response);

    // The upstream holds everything after "first" until we release it: if the gateway buffered,
    // this read would time out.
    let mut seen = String::new();
    while !seen.contains("first") {
        let data = reader.next_data(Duration::from_secs(10)).await.expect("chunk before release");
        let chunk: Value = serde_json::from_str(&data).unwrap();
        seen.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
    let fake_base = fake.base_v1.trim_end_matches("/v1");
    http.post(format!("{fake_base}/control/release")).send().await.unwrap();
    let mut rest = Vec::new();
    while let Some(data) = reader.next_data(Duration::from_secs(10)).await {
        rest.push(data);
    }
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    assert!(rest.iter().any(|d| d.contains(" second")), "{rest:?}");

    // Forwarded faithfully: unknown fields kept, upstream model name, the key as a bearer token.
    let received: Value = http.get(format!("{fake_base}/control/requests")).send().await.unwrap().json().await.unwrap();
    let forwarded = &received[0];
    assert_eq!(forwarded["body"]["model"], "gated");
    assert_eq!(forwarded["body"]["logit_bias"], json!({"42": 1}));
    assert_eq!(forwarded["body"]["user"], "team-a");
    assert_eq!(forwarded["body"]["metadata"], json!({"k": "v"}));
    assert_eq!(forwarded["authorization"], format!("Bearer {SECRET}"));

    // The key never shows up in what the gateway logged.
    let logs: Vec<String> = gw.process.lines.try_iter().collect();
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| !l.contains(SECRET)), "the provider key leaked into the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dropping_the_connection_mid_stream_ends_with_an_error_event_then_done() {
    let fake = FakeProvider::start();
    let config = config_with_local(1, 2048, &fake.provider_section(None));
    let gw = Gateway::start(&config, ALL_LOCAL_POLICY).await;
    let body = json!({"model": "fake/drop", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = reqwest::Client::new().post(format!("{}/chat/completions", gw.v1())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let mut events = Vec::new();
    while !events.iter().any(|d: &String| d.contains("partial")) {
        events.push(reader.next_data(Duration::from_secs(10)).await.expect("chunks before the break"));
    }
    reqwest::Client::new().post(format!("{}/control/release", fake.base_v1.trim_end_matches("/v1"))).send().await.unwrap();
    while let Some(data) = reader.next_data(Duration::from_secs(10)).await {
        events.push(data);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error", "{error}");
}
