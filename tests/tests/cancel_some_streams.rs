//! Half of sixteen concurrent streams disconnect mid-way: the rest finish with their solo
//! answers, and the engine ends with nothing active and no KV cells held for live sequences.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, Gateway, SseReader, ALL_LOCAL_POLICY};

fn body(i: usize, stream: bool) -> Value {
    json!({"model": "auto", "stream": stream, "temperature": 0, "max_tokens": 32,
           "messages": [{"role": "user", "content": format!("Write a sentence about the number {i}.")}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_eight_of_sixteen_streams_leaves_the_others_correct() {
    let gw = Gateway::start(&config_with_local(8, 16384, ""), ALL_LOCAL_POLICY).await;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", gw.v1());
    let mut solo = Vec::new();
    for i in 0..16 {
        let r: Value = http.post(&url).json(&body(i, false)).send().await.unwrap().json().await.unwrap();
        solo.push(r["choices"][0]["message"]["content"].as_str().unwrap().to_owned());
    }
    let before = gw.engine_stats().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let response = http.post(&url).json(&body(i, true)).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let mut reader = SseReader::new(response);
                let mut text = String::new();
                let mut finish = None;
                while let Some(data) = reader.next_data(Duration::from_mins(2)).await {
                    if data == "[DONE]" {
                        return Some((text, finish));
                    }
                    let chunk: Value = serde_json::from_str(&data).unwrap();
                    text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
                    if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
                        finish = Some(f.to_owned());
                    }
                    if i % 2 == 0 && !text.is_empty() {
                        return None; // disconnect mid-stream
                    }
                }
                panic!("stream {i} ended without [DONE]");
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            None => assert_eq!(i % 2, 0),
            Some((text, finish)) => {
                assert_eq!(i % 2, 1);
                assert_eq!(text, solo[i], "stream {i} differs from its solo answer");
                assert!(matches!(finish.as_deref(), Some("stop" | "length")));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let stats = loop {
        let stats = gw.engine_stats().await;
        if stats["active"] == 0 && stats["queued"] == 0 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "engine never settled: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["kv_cells_used"], 0, "{stats}");
    let cancelled = stats["cancelled_total"].as_u64().unwrap() - before["cancelled_total"].as_u64().unwrap();
    let finished = stats["finished_total"].as_u64().unwrap() - before["finished_total"].as_u64().unwrap();
    assert_eq!(finished + cancelled, 16, "{stats}");
    assert!(finished >= 8, "{stats}");
}
