"""OpenAI requests the Messages API would refuse as sent, and Anthropic answers a client could
not act on, translated so that both sides hold (the fake refuses what the real API refuses): a
follow-up asked without `tools` after tool calls, `temperature` with `top_p`, a prefill ending in
whitespace, a data URL with parameters, `tool_choice` without tools, a text part without text;
Anthropic's errors in OpenAI's types and codes; a client that leaves a stream is billed the prompt
tokens Anthropic reported at its start, not an estimate; a silent stream carries keep-alive
comments."""

import json
import re
import socket

import httpx
import openai
import pytest

from conftest import Gateway, accounting_record, sse_events

HISTORY = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    {"role": "user", "content": "summarise that in one line"},
]


@pytest.fixture(scope="module")
def claude(tmp_path_factory, fake_provider):
    config = (
        '[server]\nregion = "eu-west"\n\n'
        f'[[providers]]\nname = "anthropic"\nkind = "anthropic"\nbase_url = "{fake_provider}"\n'
        'api_key_env = "ANTHROPIC_TEST_KEY"\nretry_base_ms = 5\nmax_retries = 0\ntrusted = true\n'
        'models = [{ name = "echo", input_per_mtok = 3.0, output_per_mtok = 15.0 }, { name = "gated", input_per_mtok = 3.0, output_per_mtok = 15.0 }]\n'
        '[policy]\nfile = "{policy}"\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("claude-edges"), config, '[[rule]]\nname = "all"\nroute = "anthropic/echo"\n',
                 env={"ANTHROPIC_TEST_KEY": "sk-ant-test-secret"})
    yield gw
    gw.stop()


def client(gw):
    return openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)


def sent(fake_provider):
    return httpx.get(f"{fake_provider}/control/requests").json()[-1]["body"]


def test_a_follow_up_without_tools_after_tool_calls(claude, fake_provider):
    answer = client(claude).chat.completions.create(model="anthropic/echo", messages=HISTORY)
    assert answer.choices[0].message.content.endswith("summarise that in one line"), "answered, not refused"
    body = sent(fake_provider)
    assert body["tools"] == [{"name": "weather", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "none"}, "the tools are named for the history, not to be called"


def test_temperature_with_top_p_sends_the_temperature(claude, fake_provider):
    client(claude).chat.completions.create(model="anthropic/echo", temperature=0.3, top_p=0.9, messages=[{"role": "user", "content": "hi"}])
    body = sent(fake_provider)
    assert body["temperature"] == 0.3 and "top_p" not in body
    client(claude).chat.completions.create(model="anthropic/echo", top_p=0.9, messages=[{"role": "user", "content": "hi"}])
    assert sent(fake_provider)["top_p"] == 0.9, "alone, top_p is sent"


def test_a_prefill_ending_in_whitespace(claude, fake_provider):
    client(claude).chat.completions.create(model="anthropic/echo", messages=[
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "The answer is "}])
    assert sent(fake_provider)["messages"][-1]["content"] == [{"type": "text", "text": "The answer is"}]


def test_a_data_url_with_parameters_sends_its_media_type(claude, fake_provider):
    client(claude).chat.completions.create(model="anthropic/echo", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;name=a.png;base64,iVBORw0KGgo="}}]}])
    source = sent(fake_provider)["messages"][0]["content"][1]["source"]
    assert source == {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize("choice", [{"tool_choice": "none"}, {"parallel_tool_calls": False}, {"tool_choice": "none", "parallel_tool_calls": False}])
def test_tool_choice_without_tools_is_not_sent(claude, fake_provider, choice):
    client(claude).chat.completions.create(model="anthropic/echo", messages=[{"role": "user", "content": "hi"}], **choice)
    body = sent(fake_provider)
    assert "tool_choice" not in body and "tools" not in body, body


def test_a_text_part_without_text_is_refused_by_name(claude):
    with pytest.raises(openai.BadRequestError) as refused:
        client(claude).chat.completions.create(model="anthropic/echo", messages=[{"role": "user", "content": [{"type": "text"}]}])
    assert refused.value.body["param"] == "messages[0].content[0].text"


@pytest.mark.parametrize("status,kind,message,exception,code", [
    (400, "invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum", openai.BadRequestError, "context_length_exceeded"),
    (404, "not_found_error", "model: claude-nope", openai.NotFoundError, "model_not_found"),
    (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", openai.APIStatusError, "request_too_large"),
    (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", openai.RateLimitError, "rate_limit_exceeded"),
])
def test_anthropic_errors_reach_the_client_in_openai_terms(claude, fake_provider, status, kind, message, exception, code):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": status, "type": kind, "message": message}]}).raise_for_status()
    with pytest.raises(exception) as failed:
        client(claude).chat.completions.create(model="anthropic/echo", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == status
    assert failed.value.body["code"] == code and message in failed.value.body["message"], failed.value.body


def test_a_client_that_leaves_a_stream_is_billed_the_prompt_anthropic_reported(claude, fake_provider):
    # The fake holds the stream after "first"; the client closes its connection there. The record
    # bills the 5,000 prompt tokens message_start reported (an estimate from "short prompt" would
    # be 3) and an estimate of what was streamed.
    host, port = claude.base.removeprefix("http://").split(":")
    body = json.dumps({"model": "anthropic/gated", "stream": True, "messages": [{"role": "user", "content": "short prompt"}]})
    try:
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(body)}\r\n\r\n{body}".encode())
            received = b""
            while b"first" not in received:
                received += conn.recv(65536)
        request_id = re.search(rb"x-request-id: (\S+)", received).group(1).decode()
        record = accounting_record(claude, request_id, timeout=20)
    finally:
        httpx.post(f"{fake_provider}/control/release")
    assert record["prompt_tokens"] == "5000", record
    assert int(record["completion_tokens"]) >= 1 and record["cost_estimated"] == "true", record
    assert float(record["cost_usd"]) >= 5000 * 3.0 / 1e6


def test_a_silent_stream_carries_keep_alive_comments(claude, fake_provider):
    try:
        with httpx.stream("POST", f"{claude.v1}/chat/completions", timeout=30,
                          json={"model": "anthropic/gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            lines = r.iter_lines()
            while "first" not in next(lines):
                pass
            # The next line while the fake holds the rest: a comment, which clients skip.
            assert next(l for l in lines if l) == ": keep-alive"
    finally:
        httpx.post(f"{fake_provider}/control/release")
