"""Legacy `POST /v1/completions` through the official openai SDK: the local engine continues the
raw prompt (no chat template), OpenAI-compatible providers get their own `/completions`;
answers and stream chunks validated against the spec."""

import httpx
import openai
import pytest

from conftest import accounting_record, fake_requests, parse_chunks, sse_events


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_local_engine_continues_the_raw_prompt(gateway, client, schemas):
    raw = client.completions.with_raw_response.create(model="local-small", prompt="1, 2, 3, 4,", max_tokens=8, temperature=0)
    schemas.validate("CreateCompletionResponse", raw.http_response.json())
    r = raw.parse()
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert raw.headers["x-switchyard-target"] == "local/local-small"
    # A raw prompt is a handful of tokens; the chat template would add its system prompt (> 20).
    assert r.usage.prompt_tokens < 12
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    # Greedy continuation of a counting prompt continues the count.
    assert "5" in r.choices[0].text
    record = accounting_record(gateway, raw.headers["x-request-id"])
    assert record["status"] == "200" and int(record["completion_tokens"]) == r.usage.completion_tokens


def test_default_max_tokens_is_sixteen(client):
    r = client.completions.create(model="local-small", prompt="Once upon a time", temperature=0)
    assert r.usage.completion_tokens <= 16


def test_streamed_local_completion_matches_the_spec(gateway, schemas):
    body = {"model": "local-small", "prompt": "The capital of France is", "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.v1}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = parse_chunks(events)
    for c in chunks:
        assert c["object"] == "text_completion" and set(c) >= {"id", "created", "model", "choices"}
    # The spec models whole answers (finish_reason a string): the finishing chunk is one.
    schemas.validate("CreateCompletionResponse", next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] in (["stop"], ["length"])


def test_openai_compatible_provider_gets_its_completions_endpoint(client, fake_provider, schemas):
    raw = client.completions.with_raw_response.create(model="fake/echo", prompt="hello there", max_tokens=5, user="u-1")
    schemas.validate("CreateCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].text == "echo: hello there"
    assert raw.parse().id == "cmpl-fake", "the provider's own id, not re-prefixed"
    sent = fake_requests(fake_provider)[-1]
    assert sent["prompt"] == "hello there" and sent["max_tokens"] == 5 and sent["user"] == "u-1"
    assert "messages" not in sent
    assert [r["path"] for r in httpx.get(f"{fake_provider}/control/requests").json()][-1] == "/v1/completions"


def test_streamed_provider_completion(client):
    chunks = list(client.completions.create(model="fake/echo", prompt="a b c", stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "echo: a b c"
    assert {c.id for c in chunks} == {"cmpl-fake"}


@pytest.mark.parametrize("body,param", [
    ({"model": "auto"}, "prompt"),
    ({"model": "auto", "prompt": ""}, "prompt"),
    ({"model": "auto", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "auto", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "auto", "prompt": []}, "prompt"),
    # Chat fields are named, not dropped.
    ({"model": "auto", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages"),
    ({"model": "auto", "prompt": "x", "max_completion_tokens": 5}, "max_completion_tokens"),
    ({"model": "auto", "prompt": "x", "echo": True}, "echo"),
    ({"model": "auto", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "auto", "prompt": "x", "logprobs": 2}, "logprobs"),
    ({"model": "auto", "prompt": "x", "top_logprobs": 2}, "top_logprobs"),
    ({"model": "auto", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
    # Longer than a sequence's 1,024 cells: the error names the prompt, not chat's `messages`.
    ({"model": "local-small", "prompt": "hello " * 1100, "max_tokens": 5}, "prompt"),
])
def test_bad_completions_get_openai_errors(gateway, body, param):
    r = httpx.post(f"{gateway.v1}/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
