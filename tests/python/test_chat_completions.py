"""Chat completions on the real model through the official openai SDK, validated against the spec."""

import httpx
import openai
import pytest

from conftest import Gateway, fake_provider_section, gateway_config, new_virtual_key, parse_chunks, sse_events

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_sdk_gets_a_real_answer_with_usage(client):
    r = client.chat.completions.create(model="auto", messages=HI, max_tokens=32)
    assert r.object == "chat.completion"
    assert r.model == "local-small"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    # SmolLM2's template adds its default system prompt: "Hi" alone would be under 10 tokens.
    assert r.usage.prompt_tokens > 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_non_streamed_body_and_headers_match_the_spec(gateway, schemas):
    r = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "local-small", "messages": HI, "max_tokens": 16}, timeout=60)
    assert r.status_code == 200
    schemas.validate("CreateChatCompletionResponse", r.json())
    h = r.headers
    assert h["x-request-id"].startswith("req-")
    assert h["x-switchyard-rule"] == "explicit"
    assert h["x-switchyard-target"] == "local/local-small"
    assert h["x-switchyard-tier"] == "local"
    assert 0.0 <= float(h["x-switchyard-complexity"]) <= 1.0
    assert h["x-switchyard-cache"] == "miss"
    assert float(h["x-switchyard-cost-usd"]) == 0.0


def test_stream_chunks_match_the_spec_and_end_with_usage_then_done(gateway, schemas):
    body = {"model": "auto", "messages": HI, "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-switchyard-target"] == "local/local-small"
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = parse_chunks(events)
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    # As the API documents it: every other chunk carries `usage: null`.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1


def test_stream_without_include_usage_has_no_usage_chunk(gateway):
    body = {"model": "auto", "messages": HI, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, timeout=60) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in parse_chunks(events))


def test_sdk_stream_text_equals_non_streamed_text_at_temperature_zero(client):
    msgs = [{"role": "user", "content": "List four fruits."}]
    whole = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=40)
    again = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=40)
    assert whole.choices[0].message.content == again.choices[0].message.content
    stream = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=40, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content


def test_same_seed_gives_same_sample(client):
    msgs = [{"role": "user", "content": "Tell me a very short story."}]
    a = client.chat.completions.create(model="auto", messages=msgs, temperature=0.9, top_p=0.95, seed=1234, max_tokens=30)
    b = client.chat.completions.create(model="auto", messages=msgs, temperature=0.9, top_p=0.95, seed=1234, max_tokens=30)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_tokens_ends_with_length(client):
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Write a long essay about rivers."}], max_tokens=5, temperature=0
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    r2 = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Write a long essay about rivers."}], max_completion_tokens=3, temperature=0
    )
    assert r2.usage.completion_tokens == 3


def test_stop_string_cuts_the_answer_before_it(client):
    msgs = [{"role": "user", "content": "Write two sentences about the moon."}]
    full = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=48).choices[0].message.content
    assert len(full) > 20, full
    stop = full[12:16]
    cut = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=48, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    streamed = client.chat.completions.create(model="auto", messages=msgs, temperature=0, max_tokens=48, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(stop)]


def test_models_lists_local_each_provider_model_and_auto(gateway, schemas, client):
    r = httpx.get(f"{gateway.v1}/models")
    schemas.validate("ListModelsResponse", r.json())
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "local-small" and ids[-1] == "auto"
    assert "fake/echo" in ids and "fake/gated" in ids


def test_a_model_can_be_retrieved_by_its_id(gateway, schemas, client):
    for model_id in ["local-small", "fake/echo", "auto"]:
        r = httpx.get(f"{gateway.v1}/models/{model_id}")
        assert r.status_code == 200, r.text
        schemas.validate("Model", r.json())
        assert client.models.retrieve(model_id).id == model_id
    missing = httpx.get(f"{gateway.v1}/models/fake/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    # Every spelling a request's `model` may use finds its model.
    for spelling, listed in [("local", "local-small"), ("local/local-small", "local-small"), ("echo", "fake/echo")]:
        r = httpx.get(f"{gateway.v1}/models/{spelling}")
        assert r.status_code == 200 and r.json()["id"] == listed, (spelling, r.text)


def test_models_list_only_what_the_tenant_may_use(tmp_path, fake_provider):
    key, key_hash = new_virtual_key()
    tenants = f'[[tenants]]\nname = "us-team"\nkeys = ["{key_hash}"]\nresidency = ["us"]\n'
    providers = fake_provider_section(fake_provider, name="eufake", region="eu-west") + fake_provider_section(fake_provider, name="usfake", region="us-east")
    gw = Gateway(tmp_path, gateway_config(providers + tenants), policy='[[rule]]\nname = "all"\nroute = "usfake/echo"\n')
    try:
        headers = {"authorization": f"Bearer {key}"}
        ids = [m["id"] for m in httpx.get(f"{gw.v1}/models", headers=headers).json()["data"]]
        # The local engine runs in eu-west, like eufake: outside the tenant's residency.
        assert "usfake/echo" in ids and ids[-1] == "auto", ids
        assert not any(i.startswith("eufake/") or i == "local-small" for i in ids), ids
        for hidden in ["eufake/echo", "local", "local-small"]:
            r = httpx.get(f"{gw.v1}/models/{hidden}", headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (hidden, r.text)
    finally:
        gw.stop()
