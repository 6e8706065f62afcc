//! Single-stream prefill and decode speed: the engine alone next to through the gateway (HTTP,
//! SSE, routing). Run with `make bench`; prints a table. Not a test: numbers vary by machine.
//!
//! Both sides are timed the same way, from the caller's seat: prefill tok/s = prompt tokens /
//! time to the first token; decode tok/s = (completion tokens - 1) / (time from the first to the
//! last token).

use std::time::{Duration, Instant};

use local_engine::{EngineConfig, EngineHandle, GenerationEvent, GenerationRequest, SamplingParams, TemplateMessage};
use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, model_path, Gateway, SseReader, ALL_LOCAL_POLICY};

const RUNS: usize = 5;
const DECODE_TOKENS: u32 = 128;

struct Sample {
    prompt_tokens: u32,
    completion_tokens: u32,
    to_first: Duration,
    first_to_last: Duration,
}

impl Sample {
    fn prefill_tps(&self) -> f64 {
        f64::from(self.prompt_tokens) / self.to_first.as_secs_f64()
    }
    fn decode_tps(&self) -> f64 {
        f64::from(self.completion_tokens.saturating_sub(1)) / self.first_to_last.as_secs_f64()
    }
}

/// A different prompt each run (the run number comes first), so that only the chat template's
/// system prompt can be reused from an earlier run's KV cells, on both paths alike.
fn long_prompt(run: usize) -> String {
    let paragraph = "The river runs through the old town, past the mill, the bridge and the market square, where traders sell bread, cheese, apples and wool every morning. ";
    format!("Text {run}: {}Summarise the text above in one sentence.", paragraph.repeat(12))
}

const DECODE_PROMPT: &str = "Count from 1 to 200, separated by commas.";

async fn engine_sample(engine: &EngineHandle, prompt: &str, max_tokens: u32) -> Sample {
    let request = GenerationRequest {
        messages: vec![TemplateMessage { role: "user".into(), content: prompt.into() }],
        tools: None,
        sampling: SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ..SamplingParams::default() },
        raw_prompt: None,
        tenant: None,
    };
    let start = Instant::now();
    let mut events = engine.submit(request).expect("engine accepts");
    let mut first = None;
    loop {
        match events.recv().await.expect("engine answers") {
            GenerationEvent::Started { .. } | GenerationEvent::Token(_) => {}
            GenerationEvent::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            GenerationEvent::Finished { prompt_tokens, completion_tokens, .. } => {
                let first = first.unwrap_or_else(Instant::now);
                return Sample { prompt_tokens, completion_tokens, to_first: first - start, first_to_last: first.elapsed() };
            }
            GenerationEvent::Failed(e) => panic!("engine failed: {e}"),
        }
    }
}

async fn gateway_sample(client: &reqwest::Client, gateway: &Gateway, prompt: &str, max_tokens: u32) -> Sample {
    let body = json!({"model": "auto", "stream": true, "temperature": 0, "max_tokens": max_tokens,
                      "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": prompt}]});
    let start = Instant::now();
    let response = client.post(format!("{}/chat/completions", gateway.v1())).json(&body).send().await.expect("gateway answers");
    let mut reader = SseReader::new(response);
    let (mut first, mut last) = (None, None);
    let mut usage = Value::Null;
    while let Some(data) = reader.next_data(Duration::from_mins(2)).await {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk");
        if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            first.get_or_insert_with(Instant::now);
            last = Some(Instant::now());
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    let (first, last) = (first.expect("some content"), last.expect("some content"));
    let count = |k: &str| u32::try_from(usage[k].as_u64().expect("usage")).expect("fits");
    Sample { prompt_tokens: count("prompt_tokens"), completion_tokens: count("completion_tokens"), to_first: first - start, first_to_last: last - first }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut config = EngineConfig::with_model(model_path());
    config.context = 4096;
    config.parallel = 1;
    config.threads = 2;
    let engine = EngineHandle::start(config).expect("engine starts");
    // Warm-up (page in the weights), then measure.
    engine_sample(&engine, "Hi", 4).await;
    let mut engine_prefill = Vec::new();
    let mut engine_decode = Vec::new();
    let mut engine_tokens = (0, 0);
    for run in 0..RUNS {
        let p = engine_sample(&engine, &long_prompt(run), 1).await;
        engine_prefill.push(p.prefill_tps());
        let d = engine_sample(&engine, DECODE_PROMPT, DECODE_TOKENS).await;
        engine_decode.push(d.decode_tps());
        engine_tokens = (p.prompt_tokens, d.completion_tokens);
    }
    drop(engine);

    let gateway = Gateway::start(&config_with_local(1, 4096, ""), ALL_LOCAL_POLICY).await;
    let client = reqwest::Client::new();
    gateway_sample(&client, &gateway, "Hi", 4).await;
    let mut gw_prefill = Vec::new();
    let mut gw_decode = Vec::new();
    let mut gw_tokens = (0, 0);
    for run in 0..RUNS {
        let p = gateway_sample(&client, &gateway, &long_prompt(RUNS + run), 1).await;
        gw_prefill.push(p.prefill_tps());
        let d = gateway_sample(&client, &gateway, DECODE_PROMPT, DECODE_TOKENS).await;
        gw_decode.push(d.decode_tps());
        gw_tokens = (p.prompt_tokens, d.completion_tokens);
    }

    let (ep, ed, gp, gd) = (median(engine_prefill), median(engine_decode), median(gw_prefill), median(gw_decode));
    println!("single stream, SmolLM2-135M-Instruct Q4_1, 2 threads, median of {RUNS} runs (greedy)");
    println!("| path            | prefill tok/s | decode tok/s | prompt tokens | completion tokens |");
    println!("|-----------------|---------------|--------------|---------------|-------------------|");
    println!("| engine alone    | {ep:>13.1} | {ed:>12.1} | {:>13} | {:>17} |", engine_tokens.0, engine_tokens.1);
    println!("| through gateway | {gp:>13.1} | {gd:>12.1} | {:>13} | {:>17} |", gw_tokens.0, gw_tokens.1);
    println!("| gateway / alone | {:>12.1}% | {:>11.1}% |               |                   |", 100.0 * gp / ep, 100.0 * gd / ed);
}
