"""The anthropic kind through the official openai SDK, against a fake that validates requests the
way the Messages API does (headers, required fields, alternating roles, tool shapes, no foreign
fields): plain and streamed answers, tools with streamed argument fragments, multi-turn with a
system prompt and tool results, 529 retried, result-changing OpenAI fields refused, exact cost."""

import json

import httpx
import openai
import pytest

from conftest import Gateway, accounting_record, fake_requests, gateway_config, sse_events

TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}]


@pytest.fixture(scope="module")
def claude(tmp_path_factory, fake_provider):
    section = (
        f'[[providers]]\nname = "anthropic"\nkind = "anthropic"\nbase_url = "{fake_provider}"\n'
        'api_key_env = "ANTHROPIC_TEST_KEY"\nretry_base_ms = 5\nregion = "eu-west"\ntrusted = true\n'
        'models = [{ name = "echo", input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3, max_output_tokens = 333 },'
        ' { name = "tool", input_per_mtok = 3.0, output_per_mtok = 15.0 }]\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("claude"), gateway_config(section), '[[rule]]\nname = "default"\nroute = "local"\n',
                 env={"ANTHROPIC_TEST_KEY": "sk-ant-test-secret"})
    yield gw
    gw.stop()


def client(gw):
    return openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)


def last_sent(fake_provider):
    return httpx.get(f"{fake_provider}/control/requests").json()[-1]


def test_plain_answer_headers_and_translated_body(claude, fake_provider, schemas):
    raw = client(claude).chat.completions.with_raw_response.create(
        model="anthropic/echo", seed=7, presence_penalty=0.1, user="u-1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}, {"role": "user", "content": "there"}])
    r = raw.parse()
    assert r.choices[0].message.content == "echo: hellothere"
    assert r.choices[0].finish_reason == "stop"
    schemas.validate("CreateChatCompletionResponse", raw.http_response.json())
    sent = last_sent(fake_provider)
    assert sent["path"] == "/v1/messages"
    assert sent["api_key"] == "sk-ant-test-secret" and sent["authorization"] is None
    body = sent["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["max_tokens"] == 333, "the model entry's max_output_tokens"
    assert len(body["messages"]) == 1, "consecutive user messages are merged"
    assert "seed" not in body and "presence_penalty" not in body and body["metadata"] == {"user_id": "u-1"}
    # 20 input + 5 cache-read prompt tokens, 6 output: 20 × $3 + 5 × $0.3 + 6 × $15 per Mtok.
    expected = (20 * 3.0 + 5 * 0.3 + 6 * 15.0) / 1e6
    assert float(raw.headers["x-switchyard-cost-usd"]) == pytest.approx(expected, rel=1e-12)
    assert r.usage.prompt_tokens == 25 and r.usage.completion_tokens == 6
    assert not any("sk-ant-test-secret" in line for line in claude.process.lines)


def test_stream_text_and_usage(claude, schemas):
    chunks = list(client(claude).chat.completions.create(
        model="anthropic/echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a b c"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 25 and chunks[-1].usage.completion_tokens == 6
    with httpx.stream("POST", f"{claude.v1}/chat/completions", timeout=30, json={
        "model": "anthropic/echo", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a b c"}]}) as r:
        raw = [json.loads(e) for e in sse_events(r) if e != "[DONE]"]
    for chunk in raw:
        schemas.validate("CreateChatCompletionStreamResponse", chunk)


def test_streamed_tool_call_arguments_reassemble_to_json(claude):
    calls = {}
    finish = None
    for c in client(claude).chat.completions.create(model="anthropic/tool", stream=True, tools=TOOLS, tool_choice="auto",
                                                    messages=[{"role": "user", "content": "weather in Paris?"}]):
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["id"] == "toolu_01" and calls[0]["name"] == "weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_multi_turn_with_tool_results_passes_strict_validation(claude, fake_provider):
    first = client(claude).chat.completions.create(model="anthropic/tool", tools=TOOLS,
                                                   messages=[{"role": "system", "content": "You are a weather bot."},
                                                             {"role": "user", "content": "weather in Paris?"}])
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "weather"
    second = client(claude).chat.completions.create(model="anthropic/tool", tools=TOOLS, messages=[
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": msg.content, "tool_calls": [tc.model_dump() for tc in msg.tool_calls]},
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "18C and sunny"},
    ])
    assert second.choices[0].message.content == "echo: 18C and sunny"
    body = last_sent(fake_provider)["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][0]["type"] == "tool_result"


def test_overloaded_529_is_retried(claude, fake_provider):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": 529}]}).raise_for_status()
    before = len(fake_requests(fake_provider))
    r = client(claude).chat.completions.create(model="anthropic/echo", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "echo: x"
    assert len(fake_requests(fake_provider)) - before == 2


@pytest.mark.parametrize("field,value", [("n", 2), ("logprobs", True), ("logit_bias", {"1": 5}),
                                         ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
                                         ("modalities", ["text", "audio"]), ("web_search_options", {})])
def test_result_changing_fields_are_refused_by_name(claude, fake_provider, field, value):
    before = len(fake_requests(fake_provider))
    errors = anthropic_errors(claude)
    r = httpx.post(f"{claude.v1}/chat/completions", timeout=30,
                   json={"model": "anthropic/echo", field: value, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert len(fake_requests(fake_provider)) == before
    # Refused before reaching the provider: not the provider's failure.
    assert anthropic_errors(claude) == errors


def anthropic_errors(gw):
    """Every `switchyard_upstream_errors_total` count of the provider, summed."""
    lines = httpx.get(f"{gw.base}/metrics").text.splitlines()
    return sum(int(float(line.split()[-1])) for line in lines
               if line.startswith("switchyard_upstream_errors_total{") and 'provider="anthropic"' in line)


def test_embeddings_for_an_anthropic_model_are_refused_without_counting_against_it(claude, fake_provider):
    before, errors = len(fake_requests(fake_provider)), anthropic_errors(claude)
    r = httpx.post(f"{claude.v1}/embeddings", timeout=30, json={"model": "anthropic/echo", "input": "x"})
    assert r.status_code == 400, r.text
    assert (len(fake_requests(fake_provider)), anthropic_errors(claude)) == (before, errors)


def test_a_rate_limit_error_event_that_persists_is_a_429(claude, fake_provider):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"error_event": "rate_limit_error"}] * 3}).raise_for_status()
    r = httpx.post(f"{claude.v1}/chat/completions", timeout=30,
                   json={"model": "anthropic/echo", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_streamed_cost_is_recorded_exactly(claude):
    with httpx.stream("POST", f"{claude.v1}/chat/completions", timeout=30,
                      json={"model": "anthropic/echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        request_id = r.headers["x-request-id"]
        r.read()
    rec = accounting_record(claude, request_id)
    assert rec["cost_estimated"] == "false"
    assert float(rec["cost_usd"]) == pytest.approx((20 * 3.0 + 5 * 0.3 + 6 * 15.0) / 1e6, rel=1e-12)


def test_an_opening_assistant_message_empty_parts_and_refusals_pass_strict_validation(claude, fake_provider):
    r = client(claude).chat.completions.create(model="anthropic/echo", messages=[
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "tell me"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "user", "content": "why?"},
    ])
    assert r.choices[0].message.content == "echo: why?"
    body = last_sent(fake_provider)["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "."}]
    assert body["messages"][2]["content"] == [{"type": "text", "text": "tell me"}]
    assert body["messages"][3]["content"] == [{"type": "text", "text": "I can't."}]


def test_a_tool_called_with_no_input_streams_arguments_that_parse(claude):
    tools = [{"type": "function", "function": {"name": "now", "description": "the time", "parameters": {"type": "object", "properties": {}}}}]
    whole = client(claude).chat.completions.create(model="anthropic/tool", tools=tools, messages=[{"role": "user", "content": "time?"}])
    assert whole.choices[0].message.tool_calls[0].function.arguments == "{}"
    arguments = ""
    for c in client(claude).chat.completions.create(model="anthropic/tool", stream=True, tools=tools,
                                                    messages=[{"role": "user", "content": "time?"}]):
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            arguments += (tc.function.arguments or "") if tc.function else ""
    assert json.loads(arguments) == {}


@pytest.mark.parametrize("after_start", [False, True])
def test_an_overloaded_error_before_the_answer_begins_is_retried(claude, fake_provider, after_start):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"error_event": "overloaded_error", "after_start": after_start}]}).raise_for_status()
    before = len(fake_requests(fake_provider))
    chunks = list(client(claude).chat.completions.create(model="anthropic/echo", stream=True, messages=[{"role": "user", "content": "x"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: x"
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"], "one opening"
    assert len(fake_requests(fake_provider)) - before == 2


def upstream_errors(gw):
    lines = httpx.get(f"{gw.base}/metrics").text.splitlines()
    series = [line for line in lines if line.startswith("switchyard_upstream_errors_total{")
              and 'provider="anthropic"' in line and 'kind="upstream"' in line]
    return int(float(series[0].split()[-1])) if series else 0


def test_a_stream_cut_before_message_stop_ends_with_an_error(claude, fake_provider):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"cut": True}]}).raise_for_status()
    errors = upstream_errors(claude)
    with httpx.stream("POST", f"{claude.v1}/chat/completions", timeout=30,
                      json={"model": "anthropic/echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}) as r:
        request_id = r.headers["x-request-id"]
        events = list(sse_events(r))
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2]), events[-2]
    assert "echo:" in "".join(events[:-2]), "the text before the cut was streamed"
    record = accounting_record(claude, request_id)
    assert upstream_errors(claude) == errors + 1
    # The prompt's tokens come from message_start (20 + 5 cached), not from an estimate.
    assert record["prompt_tokens"] == "25", record


def test_a_cut_stream_shows_the_usage_it_is_billed_for(claude, fake_provider):
    # Cut before message_stop, Anthropic has reported only message_start's placeholder (one output
    # token): the usage chunk before the error shows what the record bills (the streamed text's
    # estimate), not the placeholder.
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"cut": True}]}).raise_for_status()
    with httpx.stream("POST", f"{claude.v1}/chat/completions", timeout=30,
                      json={"model": "anthropic/echo", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "one two three four five six"}]}) as r:
        request_id = r.headers["x-request-id"]
        events = list(sse_events(r))
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2]), events[-3:]
    usage = json.loads(events[-3])["usage"]
    record = accounting_record(claude, request_id)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (int(record["prompt_tokens"]), int(record["completion_tokens"])), (usage, record)
    assert usage["completion_tokens"] > 1 and record["cost_estimated"] == "true"
