//! The `async-openai` client against the real gateway and model.

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use futures::StreamExt;
use switchyard_e2e::{config_with_local, Gateway, ALL_LOCAL_POLICY};

fn request(prompt: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("auto")
        .temperature(0.0)
        .max_completion_tokens(24u32)
        .messages([ChatCompletionRequestUserMessageArgs::default().content(prompt).build().unwrap().into()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn async_openai_gets_the_same_greedy_answer_streamed_and_not() {
    let gw = Gateway::start(&config_with_local(4, 4096, ""), ALL_LOCAL_POLICY).await;
    let client = Client::with_config(OpenAIConfig::new().with_api_base(gw.v1()).with_api_key("unused"));

    let whole = client.chat().create(request("Name three colours.")).await.expect("non-streamed answer");
    let text = whole.choices[0].message.content.clone().unwrap_or_default();
    assert!(!text.trim().is_empty(), "empty answer");
    let usage = whole.usage.expect("usage on a non-streamed answer");
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 24, "{usage:?}");
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

    let mut streamed_req = request("Name three colours.");
    streamed_req.stream_options = Some(ChatCompletionStreamOptions { include_usage: Some(true), ..Default::default() });
    let mut stream = client.chat().create_stream(streamed_req).await.expect("stream opens");
    let mut streamed = String::new();
    let mut finish = None;
    let mut stream_usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk parses");
        for choice in &chunk.choices {
            if let Some(piece) = &choice.delta.content {
                streamed.push_str(piece);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk carries no choices");
            stream_usage = Some(u);
        }
    }
    assert_eq!(streamed, text, "temperature 0 must give the same text streamed and not");
    assert!(finish.is_some(), "a chunk carried finish_reason");
    let stream_usage = stream_usage.expect("include_usage gives a usage chunk");
    assert_eq!(stream_usage.completion_tokens, usage.completion_tokens);
    assert_eq!(stream_usage.prompt_tokens, usage.prompt_tokens);
}

#[tokio::test]
async fn async_openai_lists_local_model_and_auto() {
    let gw = Gateway::start(&config_with_local(1, 2048, ""), ALL_LOCAL_POLICY).await;
    let client = Client::with_config(OpenAIConfig::new().with_api_base(gw.v1()).with_api_key("unused"));
    let models = client.models().list().await.expect("models list");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["local-small", "auto"]);
}
