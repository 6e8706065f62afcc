"""`logprobs` / `top_logprobs` on the local engine: each token of the answer with its
log-probability and the most likely alternatives, in the API's shape, streamed or not."""

import httpx
import openai
import pytest

from conftest import parse_chunks, sse_events

ASK = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def spelled(entries):
    return b"".join(bytes(e["bytes"]) for e in entries).decode()


def test_sdk_gets_each_tokens_logprob_and_alternatives(client):
    r = client.chat.completions.create(model="local-small", messages=ASK, max_tokens=24, temperature=0,
                                       logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        # Greedy decoding picks the most likely token.
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)


def test_without_logprobs_the_answer_has_none_and_is_the_same(client):
    plain = client.chat.completions.create(model="local-small", messages=ASK, max_tokens=24, temperature=0)
    with_logprobs = client.chat.completions.create(model="local-small", messages=ASK, max_tokens=24, temperature=0, logprobs=True)
    assert plain.choices[0].logprobs is None
    assert with_logprobs.choices[0].message.content == plain.choices[0].message.content
    assert all(e.top_logprobs == [] for e in with_logprobs.choices[0].logprobs.content)


def test_bodies_match_the_spec_streamed_or_not(gateway, schemas):
    body = {"model": "local-small", "messages": ASK, "max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=60).json()
    schemas.validate("CreateChatCompletionResponse", whole)
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        chunks = parse_chunks(sse_events(r))
    entries, text = [], ""
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c)
        for choice in c["choices"]:
            piece = choice["delta"].get("content") or ""
            logprobs = choice.get("logprobs")
            if logprobs:
                assert piece, f"entries only ride on chunks with text: {c}"
                entries += logprobs["content"]
            text += piece
    # A chunk carries the tokens its text starts: together they spell the same answer.
    assert text == whole["choices"][0]["message"]["content"]
    assert spelled(entries) == text
    assert entries == whole["choices"][0]["logprobs"]["content"]


def test_tokens_of_a_stop_string_are_not_reported(client):
    full = client.chat.completions.create(model="local-small", messages=ASK, max_tokens=24, temperature=0).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[len(words) // 2]
    r = client.chat.completions.create(model="local-small", messages=ASK, max_tokens=24, temperature=0, stop=[stop],
                                       logprobs=True)
    content = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and full.startswith(content) and stop not in content
    tokens = "".join(e.token for e in r.choices[0].logprobs.content)
    # Every reported token starts inside the answer; the one holding the stop string's start
    # may run into it, and nothing after it is reported.
    assert tokens.startswith(content)
    last = r.choices[0].logprobs.content[-1].token
    assert len(tokens) - len(content) < len(last) or tokens == content
