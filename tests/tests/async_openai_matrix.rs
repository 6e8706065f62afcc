//! The `async-openai` client (Rust) against the real gateway beyond chat (`openai_rust_client.rs`):
//! the Responses API (create, stream, retrieve), legacy completions, and embeddings from the
//! local embedding model (floats and base64).

use async_openai::config::OpenAIConfig;
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EncodingFormat};
use async_openai::types::responses::{CreateResponseArgs, ResponseStreamEvent, Status};
use async_openai::Client;
use futures::StreamExt;
use switchyard_e2e::{config_with_local, workspace_root, Gateway, ALL_LOCAL_POLICY};

/// Length of an all-MiniLM-L6-v2 embedding.
const EMBED_DIMENSIONS: usize = 384;

fn client(gw: &Gateway) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(gw.v1()).with_api_key("unused"))
}

/// The `[local_embeddings]` section for the embedding model that `make embedding-model` makes.
fn local_embeddings_section() -> String {
    let path = workspace_root().join("models/all-MiniLM-L6-v2.f16.gguf");
    assert!(path.is_file(), "{} is missing: run `make embedding-model` (make test does it)", path.display());
    format!("[local_embeddings]\nmodel = {:?}\nname = \"local-embed\"\nthreads = 2\n", path.display().to_string())
}

#[tokio::test]
async fn async_openai_responses_create_stream_and_retrieve() {
    let gw = Gateway::start(&config_with_local(2, 4096, ""), ALL_LOCAL_POLICY).await;
    let client = client(&gw);
    let request = || {
        CreateResponseArgs::default()
            .model("auto")
            .input("What is 2+2? Answer with a number.")
            .max_output_tokens(32u32)
            .temperature(0.0)
            .build()
            .unwrap()
    };

    let whole = client.responses().create(request()).await.expect("non-streamed response");
    assert_eq!(whole.object, "response");
    assert_eq!(whole.status, Status::Completed, "{whole:?}");
    let text = whole.output_text().expect("output_text");
    assert!(!text.trim().is_empty(), "empty answer");
    let usage = whole.usage.as_ref().expect("usage");
    assert!(usage.output_tokens >= 1 && usage.output_tokens <= 32, "{usage:?}");
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);

    let stored = client.responses().retrieve(&whole.id).await.expect("retrieve");
    assert_eq!(stored.id, whole.id);
    assert_eq!(stored.output_text().as_deref(), Some(text.as_str()));

    let mut stream = client.responses().create_stream(request()).await.expect("stream opens");
    let mut deltas = String::new();
    let mut kinds = Vec::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        let event = event.expect("event parses");
        match &event {
            ResponseStreamEvent::ResponseCreated(_) => kinds.push("created"),
            ResponseStreamEvent::ResponseOutputTextDelta(d) => {
                kinds.push("delta");
                deltas.push_str(&d.delta);
            }
            ResponseStreamEvent::ResponseCompleted(c) => {
                kinds.push("completed");
                completed = Some(c.response.clone());
            }
            _ => kinds.push("other"),
        }
    }
    assert_eq!(kinds.first(), Some(&"created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    let completed = completed.expect("response.completed");
    assert_eq!(deltas, text, "temperature 0: the same text streamed and not");
    assert_eq!(completed.output_text().as_deref(), Some(text.as_str()));
    assert_eq!(completed.status, Status::Completed);
}

#[tokio::test]
async fn async_openai_legacy_completions() {
    let gw = Gateway::start(&config_with_local(2, 2048, ""), ALL_LOCAL_POLICY).await;
    let client = client(&gw);
    let request = CreateCompletionRequestArgs::default()
        .model("local-small")
        .prompt("1, 2, 3, 4,")
        .max_tokens(8u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let whole = client.completions().create(request.clone()).await.expect("completion");
    assert_eq!(whole.object, "text_completion");
    let text = &whole.choices[0].text;
    assert!(text.contains('5'), "greedy continuation of a count: {text:?}");
    let usage = whole.usage.as_ref().expect("usage");
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 8, "{usage:?}");

    let mut stream = client.completions().create_stream(request).await.expect("stream opens");
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk parses");
        for choice in &chunk.choices {
            streamed.push_str(&choice.text);
        }
    }
    assert_eq!(&streamed, text, "temperature 0: the same text streamed and not");
}

#[tokio::test]
async fn async_openai_embeddings_floats_and_base64() {
    let gw = Gateway::start(&config_with_local(1, 2048, &local_embeddings_section()), ALL_LOCAL_POLICY).await;
    let client = client(&gw);
    let inputs = ["The quick brown fox jumps over the lazy dog.", "A gateway routes requests to models."];
    let request = |format| {
        CreateEmbeddingRequestArgs::default().model("local-embed").input(inputs).encoding_format(format).build().unwrap()
    };

    let floats = client.embeddings().create(request(EncodingFormat::Float)).await.expect("float embeddings");
    assert_eq!(floats.object, "list");
    assert_eq!(floats.model, "local-embed");
    assert_eq!(floats.data.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
    assert!(floats.usage.prompt_tokens > 0 && floats.usage.total_tokens == floats.usage.prompt_tokens, "{:?}", floats.usage);
    for d in &floats.data {
        assert_eq!(d.embedding.len(), EMBED_DIMENSIONS);
        let norm = d.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "vector {} has norm {norm}", d.index);
    }

    let b64 = client.embeddings().create_base64(request(EncodingFormat::Base64)).await.expect("base64 embeddings");
    assert_eq!(b64.data.len(), inputs.len());
    for (encoded, plain) in b64.data.into_iter().zip(&floats.data) {
        let decoded: Vec<f32> = encoded.embedding.into();
        assert_eq!(decoded.len(), EMBED_DIMENSIONS);
        let diff = decoded.iter().zip(&plain.embedding).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "base64 vector {} differs from the float one by {diff}", encoded.index);
    }
}
