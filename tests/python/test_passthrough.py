"""The openai-compatible passthrough against the fake provider, through the official SDK."""

import httpx
import openai


def test_sdk_through_the_passthrough_gets_the_upstream_answer_and_exact_cost(gateway, schemas):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="fake/echo", messages=[{"role": "user", "content": "ping pong"}])
    r = raw.parse()
    assert r.choices[0].message.content == "echo: ping pong"
    assert r.system_fingerprint == "fp_fake"
    schemas.validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-target"] == "fake/echo"
    assert raw.headers["x-switchyard-tier"] == "remote"
    # 11 prompt tokens at $1/Mtok + 3 completion tokens at $2/Mtok.
    assert float(raw.headers["x-switchyard-cost-usd"]) == (11 * 1.0 + 3 * 2.0) / 1e6


def test_bare_model_name_unique_across_providers_resolves(gateway):
    r = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert r.status_code == 200
    assert r.headers["x-switchyard-target"] == "fake/echo"


def test_streamed_passthrough_validates_and_passes_usage_only_when_asked(gateway, schemas):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="fake/echo", messages=[{"role": "user", "content": "a b"}], stream=True, stream_options={"include_usage": True}
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b"
    assert chunks[-1].usage.total_tokens == 14
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "messages": [{"role": "user", "content": "a"}], "stream": True}) as r:
        lines = [l[6:] for l in r.iter_lines() if l.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    import json
    for line in lines[:-1]:
        schemas.validate("CreateChatCompletionStreamResponse", json.loads(line))
