"""The Responses API (`/v1/responses`) through the official openai SDK: answers and stream events
validated against the spec, the events' order, stored conversations (`previous_response_id`)
within one tenant and across two replicas sharing Redis, function tools, and errors."""

import json
import secrets

import httpx
import openai
import pytest

from conftest import (Gateway, accounting_record, fake_provider_section, fake_requests, free_port, gateway_config,
                      new_virtual_key, remote_only_config)

EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}

WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def client_for(gw, key="unused"):
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def raw_events(gw, body, key=None):
    """(event name, data) pairs of a streamed response, as sent on the wire."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    out, name = [], None
    with httpx.stream("POST", f"{gw.v1}/responses", json={**body, "stream": True}, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[len("data: "):])))
    return out


def test_sdk_response_from_the_local_model_matches_the_spec(gateway, schemas):
    raw = client_for(gateway).responses.with_raw_response.create(model="auto", input="Say hello.", max_output_tokens=16)
    assert raw.headers["x-switchyard-target"] == "local/local-small"
    schemas.validate("Response", raw.http_response.json())
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text.strip()
    assert r.usage.input_tokens > 5 and r.usage.output_tokens >= 1
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    record = accounting_record(gateway, raw.headers["x-request-id"])
    assert record["status"] == "200" and record["target"] == "local/local-small"


def test_stream_events_match_the_spec_in_the_api_order(gateway, schemas):
    events = raw_events(gateway, {"model": "auto", "input": "Count to three.", "max_output_tokens": 24})
    names = [n for n, _ in events]
    for name, data in events:
        assert data["type"] == name
        schemas.validate(EVENT_SCHEMAS[name], data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert deltas and names[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert names[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                                       names[-1]]
    assert names[-1] in ("response.completed", "response.incomplete")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == "".join(deltas)
    assert events[-4][1]["text"] == "".join(deltas)
    assert final["usage"]["output_tokens"] >= 1
    # Every event names the model that answered, not the `auto` asked for.
    assert {d["response"]["model"] for n, d in events if "response" in d} == {"local-small"}


def test_output_text_logprobs_when_included_streamed_or_not(gateway, schemas):
    body = {"model": "local-small", "input": "Name three colours.", "max_output_tokens": 16, "temperature": 0,
            "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    raw = client_for(gateway).responses.with_raw_response.create(**body)
    schemas.validate("Response", raw.http_response.json())
    part = raw.parse().output[0].content[0]
    assert part.logprobs and "".join(e.token for e in part.logprobs) == part.text
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in part.logprobs)
    events = raw_events(gateway, body)
    for name, data in events:
        schemas.validate(EVENT_SCHEMAS[name], data)
    streamed = [e for n, d in events if n == "response.output_text.delta" for e in d["logprobs"]]
    done = next(d for n, d in events if n == "response.output_text.done")
    assert streamed == done["logprobs"] == events[-1][1]["response"]["output"][0]["content"][0]["logprobs"]
    assert [e["token"] for e in streamed] == [e.token for e in part.logprobs], "greedy: the same tokens either way"
    # Without `include`, none.
    plain = client_for(gateway).responses.create(**{k: v for k, v in body.items() if k != "include"})
    assert plain.output[0].content[0].logprobs == []


def test_sdk_stream_helper_collects_the_text(gateway):
    # The SDK's helper needs `response.completed`: an answer that ends by itself (not cut by
    # max_output_tokens, which ends with `response.incomplete`).
    with client_for(gateway).responses.stream(model="fake/echo", input="one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == "echo: one two three"
    assert len(deltas) == 4


def test_previous_response_id_continues_the_conversation_without_old_instructions(gateway, fake_provider):
    client = client_for(gateway)
    word = secrets.token_hex(4)
    first = client.responses.create(model="fake/echo", input=f"alpha {word}", instructions="first instructions")
    assert first.output_text == f"echo: alpha {word}"
    second = client.responses.create(model="fake/echo", input="beta", previous_response_id=first.id, instructions="second")
    assert second.output_text == "echo: beta"
    assert second.previous_response_id == first.id
    sent = [b for b in fake_requests(fake_provider) if any(f"alpha {word}" in str(m.get("content")) for m in b.get("messages", []))][-1]
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "second"), ("user", f"alpha {word}"), ("assistant", f"echo: alpha {word}"), ("user", "beta")]


def test_stored_responses_can_be_read_and_deleted_and_store_false_keeps_nothing(gateway):
    client = client_for(gateway)
    r = client.responses.create(model="fake/echo", input="keep me")
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "echo: keep me"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert e.value.status_code == 404 and e.value.body["code"] == "response_not_found"
    unstored = client.responses.create(model="fake/echo", input="forget me", store=False)
    assert unstored.store is False
    assert httpx.get(f"{gateway.v1}/responses/{unstored.id}", timeout=10).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake/echo", input="x", previous_response_id=unstored.id)


def test_function_tools_round_trip(gateway, fake_provider, schemas):
    client = client_for(gateway)
    raw = client.responses.with_raw_response.create(model="fake/tool", input="Weather in Paris?", tools=WEATHER)
    schemas.validate("Response", raw.http_response.json())
    r = raw.parse()
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    sent = fake_requests(fake_provider)[-1]
    assert sent["tools"][0] == {"type": "function", "function": {k: v for k, v in WEATHER[0].items() if k != "type"}}
    follow = client.responses.create(model="fake/tool", previous_response_id=r.id, tools=WEATHER,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert follow.output_text == "echo: sunny, 21 C"
    sent = fake_requests(fake_provider)[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id and sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[-1] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call.call_id}


def test_reasoning_effort_and_chat_named_fields_reach_a_chat_provider(gateway, fake_provider, schemas):
    raw = client_for(gateway).responses.with_raw_response.create(
        model="fake/echo", input="hi", reasoning={"effort": "low", "summary": "auto"}, service_tier="flex", safety_identifier="user-7", prompt_cache_key="k1")
    schemas.validate("Response", raw.http_response.json())
    assert (raw.parse().reasoning.effort, raw.parse().reasoning.summary) == ("low", "auto"), "echoed as sent"
    sent = fake_requests(fake_provider)[-1]
    assert (sent["reasoning_effort"], sent["service_tier"], sent["safety_identifier"], sent["prompt_cache_key"]) == ("low", "flex", "user-7", "k1"), sent


def test_streamed_function_call_arguments_arrive_as_deltas(gateway, schemas):
    events = raw_events(gateway, {"model": "fake/tool", "input": "Weather?", "tools": WEATHER})
    for name, data in events:
        schemas.validate(EVENT_SCHEMAS[name], data)
    names = [n for n, _ in events]
    assert names[2] == "response.output_item.added" and events[2][1]["item"]["type"] == "function_call"
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert done["arguments"] == "".join(deltas) and json.loads(done["arguments"]) == {"city": "Paris"}
    assert names[-1] == "response.completed"
    assert events[-1][1]["response"]["output"][0]["arguments"] == done["arguments"]


@pytest.mark.parametrize("body,status,param", [
    ({"model": "auto"}, 400, "input"),
    ({"model": "auto", "input": 5}, 400, "input"),
    ({"model": "auto", "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"model": "auto", "input": [{"type": "item_reference", "id": "x"}]}, 404, "input[0]"),
    ({"model": "auto", "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
    ({"model": "auto", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, 400, "text.format.schema"),
    ({"model": "no-such-model", "input": "x"}, 404, "model"),
    ({"model": "auto", "input": "x", "previous_response_id": "resp_nope"}, 404, None),
    ({"model": "auto", "input": "x", "metadata": {"a": 5}}, 400, "metadata"),
    ({"model": "auto", "input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"model": "auto", "input": "x", "tool_choice": "maybe", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}, 400, "tool_choice"),
    # Checks made on the chat translation name the Responses field, not the chat one.
    ({"model": "auto", "input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"model": "auto", "input": "x", "tools": [{"type": "function", "name": "bad name!", "parameters": {"type": "object"}}]}, 400, "tools[0].name"),
    ({"model": "auto", "input": "x", "tool_choice": {"type": "function", "name": "nope"},
      "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}, 400, "tool_choice.name"),
    ({"model": "auto", "input": "x", "top_logprobs": 25}, 400, "top_logprobs"),
    ({"model": "auto", "input": "x", "include": ["bogus"]}, 400, "include[0]"),
    ({"model": "local-small", "input": "hello " * 1100, "max_output_tokens": 5}, 400, "input"),
    ({"model": "auto", "input": [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]}, 400, "input"),
    ({"model": "auto", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, 400, "input[0].content[0].text"),
    ({"model": "auto", "input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, 400, "text.format.name"),
    # What the gateway cannot carry out is refused by name, not ignored.
    ({"model": "auto", "input": "x", "conversation": "conv_1"}, 400, "conversation"),
    ({"model": "auto", "input": "x", "prompt": {"id": "pmpt_1"}}, 400, "prompt"),
    ({"model": "auto", "input": "x", "background": True}, 400, "background"),
    ({"model": "auto", "input": "x", "truncation": "sometimes"}, 400, "truncation"),
    ({"model": "auto", "input": "x", "tool_choice": "bogus"}, 400, "tool_choice"),
    ({"model": "auto", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400, "input[0].content[0].type"),
    ({"model": "auto", "input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                                 {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image", "image_url": "x"}]}]},
     400, "input[1].output[0].type"),
])
def test_bad_requests_get_openai_errors(gateway, body, status, param):
    r = httpx.post(f"{gateway.v1}/responses", json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["param"] == param


def test_a_function_call_without_its_output_is_refused_in_the_responses_apis_terms(gateway):
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "auto", "input": [
        {"role": "user", "content": "weather?"}, {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"role": "user", "content": "again"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "No tool output found for function call call_1." and r.json()["error"]["param"] == "input"


def test_refusals_output_parts_and_truncation_round_trip(gateway, fake_provider, schemas):
    # A chat provider's refusal is the message's refusal part, whole and streamed, and the client
    # may carry it back in a conversation; text parts of a function output reach the provider as
    # text; `truncation` is echoed as sent.
    refusal = {"id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": "echo",
               "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                            "message": {"role": "assistant", "content": None, "refusal": "I cannot help with that."}}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": 200, "body": refusal}]}).raise_for_status()
    r = httpx.post(f"{gateway.v1}/responses", json={"model": "fake/echo", "input": "x", "truncation": "auto"}, timeout=30).json()
    schemas.validate("Response", r)
    assert r["output"][0]["content"] == [{"type": "refusal", "refusal": "I cannot help with that."}] and r["truncation"] == "auto"
    carried = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "fake/echo", "input": [
        {"role": "user", "content": "a"}, {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "user", "content": "c"},
        {"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c9", "output": [{"type": "input_text", "text": "arr out"}]}]})
    assert carried.status_code == 200, carried.text
    sent = fake_requests(fake_provider)[-1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "c9", "content": "arr out"}, sent


def test_streamed_items_are_finished_one_at_a_time(tmp_path, fake_provider):
    # Text then a tool call (as Anthropic answers): the message is done before the call is added.
    section = (f'[[providers]]\nname = "anth"\nkind = "anthropic"\nbase_url = "{fake_provider}"\napi_key_env = "SY_ANTH_KEY"\n'
               'models = [{ name = "tool" }]\n')
    gw = Gateway(tmp_path, f'[server]\nregion = "eu-west"\n\n{section}\n[policy]\nfile = "{{policy}}"\n',
                 policy='[[rule]]\nname = "all"\nroute = "anth/tool"\n', env={"SY_ANTH_KEY": "sk-ant-test"})
    try:
        events = raw_events(gw, {"model": "auto", "input": "weather?", "tools": WEATHER})
        items = [(n, d.get("output_index")) for n, d in events if n.startswith("response.output_item.")]
        opened = [i for n, i in items if n.endswith(".added")]
        assert len(opened) == 2 and items == [(kind, i) for i in opened for kind in ("response.output_item.added", "response.output_item.done")], items
    finally:
        gw.stop()


def test_a_tenant_never_reads_or_continues_another_tenants_response(tmp_path, fake_provider):
    (key_a, hash_a), (key_b, hash_b) = new_virtual_key(), new_virtual_key()
    tenants = (f'[[tenants]]\nname = "a"\nkeys = ["{hash_a}"]\n\n'
               f'[[tenants]]\nname = "b"\nkeys = ["{hash_b}"]\n')
    gw = Gateway(tmp_path, remote_only_config(fake_provider, tenants), policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        r = client_for(gw, key_a).responses.create(model="auto", input="secret plans")
        other = client_for(gw, key_b)
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model="auto", input="x", previous_response_id=r.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(r.id)
        assert client_for(gw, key_a).responses.retrieve(r.id).output_text == "echo: secret plans"
    finally:
        gw.stop()


def test_a_conversation_continues_on_another_replica_sharing_redis(tmp_path, fake_provider, private_redis):
    extra = f'[redis]\nurl = "{private_redis.url}"\n'
    policy = '[[rule]]\nname = "all"\nroute = "fake/echo"\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(tmp_path / "a", remote_only_config(fake_provider, extra), policy=policy)
    b = Gateway(tmp_path / "b", remote_only_config(fake_provider, extra), policy=policy)
    try:
        word = secrets.token_hex(4)
        # Streamed on A: stored before `response.completed`, so B finds it at once.
        events = raw_events(a, {"model": "auto", "input": f"one {word}"})
        first_id = events[-1][1]["response"]["id"]
        second = client_for(b).responses.create(model="auto", input="two", previous_response_id=first_id)
        assert second.output_text == "echo: two"
        sent = [r for r in fake_requests(fake_provider) if any(f"one {word}" in str(m.get("content")) for m in r.get("messages", []))][-1]
        assert [m["content"] for m in sent["messages"]] == [f"one {word}", f"echo: one {word}", "two"]
        assert client_for(a).responses.retrieve(second.id).output_text == "echo: two"
        # An item of A's answer, referenced on B (as the Vercel AI SDK sends earlier turns).
        referenced = client_for(b).responses.create(model="auto", input=[
            {"role": "user", "content": f"one {word}"}, {"type": "item_reference", "id": events[-1][1]["response"]["output"][0]["id"]},
            {"role": "user", "content": "three"}])
        assert referenced.output_text == "echo: three"
        sent = [r for r in fake_requests(fake_provider) if any(f"one {word}" in str(m.get("content")) for m in r.get("messages", []))][-1]
        assert sent["messages"][1]["role"] == "assistant" and f"echo: one {word}" in str(sent["messages"][1]["content"])
        assert private_redis.cli("--scan", "--pattern", f"switchyard:response:{b'default'.hex()}:{first_id}") != ""
        # Deleted on A after B has read it: gone on B too, not served from B's own copy.
        assert client_for(b).responses.retrieve(first_id).id == first_id
        client_for(a).responses.delete(first_id)
        for gw in (a, b):
            r = httpx.get(f"{gw.v1}/responses/{first_id}", timeout=10)
            assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found", r.text
        r = httpx.post(f"{b.v1}/responses", json={"model": "auto", "input": "three", "previous_response_id": first_id}, timeout=10)
        assert r.status_code == 404, r.text
    finally:
        a.stop()
        b.stop()


def test_local_model_answers_a_multi_turn_conversation(tmp_path):
    gw = Gateway(tmp_path, gateway_config())
    try:
        client = client_for(gw)
        first = client.responses.create(model="auto", input="My name is Ada.", max_output_tokens=16, temperature=0)
        second = client.responses.create(model="auto", input="What is my name?", previous_response_id=first.id,
                                         max_output_tokens=16, temperature=0)
        # The second prompt carries the first turn: more input tokens than the question alone.
        alone = client.responses.create(model="auto", input="What is my name?", max_output_tokens=16, temperature=0)
        assert second.usage.input_tokens > alone.usage.input_tokens + 5
    finally:
        gw.stop()


@pytest.fixture
def passthrough_gateway(tmp_path, fake_provider):
    """A gateway whose provider speaks the Responses API (`responses_api = true`)."""
    section = fake_provider_section(fake_provider, name="oai", extra_keys="responses_api = true\n")
    config = f'[server]\nregion = "eu-west"\n\n{section}\n[policy]\nfile = "{{policy}}"\n'
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "all"\nroute = "oai/echo"\n')
    yield gw
    gw.stop()


def responses_sent(fake_provider):
    return [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json() if r["path"] == "/v1/responses"]


def test_providers_that_speak_the_responses_api_get_the_request_as_sent(passthrough_gateway, fake_provider, schemas):
    client = client_for(passthrough_gateway)
    word = secrets.token_hex(4)
    raw = client.responses.with_raw_response.create(model="auto", input=f"first {word}", instructions="be kind",
                                                    metadata={"k": "v"}, reasoning={"effort": "low"})
    schemas.validate("Response", raw.http_response.json())
    first = raw.parse()
    assert raw.headers["x-switchyard-target"] == "oai/echo" and first.output_text == f"echo: first {word}"
    sent = responses_sent(fake_provider)[-1]
    # Fields chat has no place for reach the provider as sent; it stores nothing itself.
    assert sent["model"] == "echo" and sent["input"] == f"first {word}" and sent["reasoning"] == {"effort": "low"}
    assert sent["store"] is False and sent["metadata"] == {"k": "v"}
    record = accounting_record(passthrough_gateway, raw.headers["x-request-id"])
    assert (record["target"], record["prompt_tokens"], record["completion_tokens"]) == ("oai/echo", "9", "4")
    # The next turn carries the stored conversation as input items.
    second = client.responses.create(model="auto", input="second", previous_response_id=first.id)
    assert second.output_text == "echo: second" and second.previous_response_id == first.id
    sent = responses_sent(fake_provider)[-1]
    assert "previous_response_id" not in sent
    assert sent["input"] == [{"role": "user", "content": f"first {word}"}, {"role": "assistant", "content": f"echo: first {word}"},
                             {"role": "user", "content": "second"}]
    assert client.responses.retrieve(second.id).output_text == "echo: second"


def test_passed_through_streams_keep_the_providers_events_and_are_stored(passthrough_gateway, fake_provider):
    events = raw_events(passthrough_gateway, {"model": "auto", "input": "one two"})
    names = [n for n, _ in events]
    assert names == ["response.created"] + ["response.output_text.delta"] * 3 + ["response.completed"]
    assert "".join(d["delta"] for n, d in events if n.endswith(".delta")) == "echo: one two"
    final = events[-1][1]["response"]
    # Every event shows the client's `store`, not the `store: false` the provider was sent.
    assert final["store"] is True and events[0][1]["response"]["store"] is True
    assert client_for(passthrough_gateway).responses.retrieve(final["id"]).output_text == "echo: one two"
    assert responses_sent(fake_provider)[-1]["stream"] is True


def test_pii_outside_the_conversation_keeps_the_request_off_the_passthrough(passthrough_gateway, fake_provider):
    before = len(responses_sent(fake_provider))
    r = client_for(passthrough_gateway).responses.create(model="auto", input="hello", metadata={"owner": "jane.doe@example.com"})
    assert r.output_text == "echo: hello"
    # Answered through the chat translation, which does not forward metadata.
    assert len(responses_sent(fake_provider)) == before
    assert "jane.doe@example.com" not in str(fake_requests(fake_provider)[-1])


@pytest.mark.parametrize("how", ["previous_response_id", "item_reference"])
def test_a_continued_conversation_keeps_its_privacy_tags(tmp_path, fake_provider, how):
    policy = ('[[rule]]\nname = "private"\nwhen.privacy = ["confidential"]\nroute = "local"\n\n'
              '[[rule]]\nname = "default"\nroute = "fake/echo"\n')
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider)), policy=policy)
    try:
        client = client_for(gw)
        first = client.responses.with_raw_response.create(model="auto", input="Our Q3 plan in one word?", max_output_tokens=8,
                                                          extra_headers={"x-switchyard-tags": "confidential"})
        assert first.headers["x-switchyard-tier"] == "local"
        before = len(fake_requests(fake_provider))
        # Continued by id, or (as the Vercel AI SDK does) by referencing the first answer's item.
        continued = ({"previous_response_id": first.parse().id, "input": "And Q4?"} if how == "previous_response_id" else
                     {"input": [{"role": "user", "content": "Our Q3 plan in one word?"},
                                {"type": "item_reference", "id": first.parse().output[0].id}, {"role": "user", "content": "And Q4?"}]})
        second = client.responses.with_raw_response.create(model="auto", max_output_tokens=8, **continued)
        assert second.headers["x-switchyard-tier"] == "local" and second.headers["x-switchyard-rule"] == "private"
        assert len(fake_requests(fake_provider)) == before
        # A new conversation without the tag goes to the default route.
        third = client.responses.with_raw_response.create(model="auto", input="Hello")
        assert third.headers["x-switchyard-target"] == "fake/echo"
    finally:
        gw.stop()


def test_a_passed_through_answer_without_usage_is_billed_on_estimates_and_shows_them(passthrough_gateway):
    r = httpx.post(f"{passthrough_gateway.v1}/responses", json={"model": "oai/bare", "input": "one two three four"}, timeout=30)
    assert r.status_code == 200, r.text
    rec = accounting_record(passthrough_gateway, r.headers["x-request-id"])
    written = -(-len("echo: one two three four") // 4)
    assert rec["cost_estimated"] == "true" and int(rec["completion_tokens"]) == written, rec
    assert r.json()["usage"]["output_tokens"] == written and r.json()["usage"]["input_tokens"] == int(rec["prompt_tokens"])


def test_hosted_tools_pass_through_and_are_refused_where_nothing_speaks_the_api(passthrough_gateway, fake_provider, gateway):
    tools = [{"type": "web_search_preview"}, *WEATHER]
    r = client_for(passthrough_gateway).responses.create(model="auto", input="news today?", tools=tools)
    assert r.output_text == "echo: news today?"
    assert responses_sent(fake_provider)[-1]["tools"] == tools
    plain = httpx.post(f"{gateway.v1}/responses", json={"model": "auto", "input": "x", "tools": tools}, timeout=30)
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "tools[0].type"
    # Only hosted tools, with a tool_choice: the choice is the provider's to apply, passed on as sent.
    for choice in ("auto", "required"):
        r = client_for(passthrough_gateway).responses.create(model="auto", input="news?", tools=[{"type": "web_search"}], tool_choice=choice)
        assert r.output_text == "echo: news?"
        assert responses_sent(fake_provider)[-1]["tool_choice"] == choice


def test_a_passed_through_request_whose_target_fails_goes_to_its_fallbacks(tmp_path, fake_provider):
    """A target that speaks the Responses API and fails before answering hands the request to the
    rule's fallbacks, as chat does: through the API to one that speaks it, else through the chat
    translation; streamed or not, accounted and stored under the target that answered."""
    dead = fake_provider_section(f"http://127.0.0.1:{free_port()}", name="dead", extra_keys="responses_api = true\nmax_retries = 0\n")
    speaks = fake_provider_section(fake_provider, name="oai", extra_keys="responses_api = true\n")
    plain = fake_provider_section(fake_provider, name="plain")
    policy = ('[[rule]]\nname = "to-oai"\nwhen.requested_model = "dead/shred"\nroute = "dead/shred"\nfallback = ["oai/echo"]\n\n'
              '[[rule]]\nname = "default"\nroute = "dead/echo"\nfallback = ["plain/echo"]\n')
    gw = Gateway(tmp_path, f'[server]\nregion = "eu-west"\n\n{dead}\n{speaks}\n{plain}\n[policy]\nfile = "{{policy}}"\n', policy=policy)
    try:
        client = client_for(gw)
        chats, passed = len(fake_requests(fake_provider)), len(responses_sent(fake_provider))
        raw = client.responses.with_raw_response.create(model="auto", input="via chat")
        assert (raw.headers["x-switchyard-rule"], raw.headers["x-switchyard-target"]) == ("default", "plain/echo")
        answer = raw.parse()
        assert answer.output_text == "echo: via chat" and client.responses.retrieve(answer.id).output_text == "echo: via chat"
        assert accounting_record(gw, raw.headers["x-request-id"])["target"] == "plain/echo"
        events = raw_events(gw, {"model": "auto", "input": "streamed via chat"})
        assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == "echo: streamed via chat"
        # Both answered through the chat translation: nothing reached a Responses endpoint.
        assert len(responses_sent(fake_provider)) == passed and len(fake_requests(fake_provider)) == chats + 2
        raw = client.responses.with_raw_response.create(model="dead/shred", input="via the API")
        assert raw.headers["x-switchyard-target"] == "oai/echo" and raw.parse().output_text == "echo: via the API"
        events = raw_events(gw, {"model": "dead/shred", "input": "streamed via the API"})
        assert events[-1][0] == "response.completed" and events[-1][1]["response"]["output"][0]["content"][0]["text"] == "echo: streamed via the API"
        assert [b["model"] for b in responses_sent(fake_provider)[passed:]] == ["echo", "echo"]
    finally:
        gw.stop()


def test_allowed_tools_pass_through_as_sent_and_narrow_the_local_engines_tools(passthrough_gateway, fake_provider, gateway):
    tools = [*WEATHER, {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
    r = client_for(passthrough_gateway).responses.create(model="auto", input="time?", tools=[{"type": "web_search"}, *tools], tool_choice=choice)
    assert r.output_text == "echo: time?"
    assert responses_sent(fake_provider)[-1]["tool_choice"] == choice
    # Translated to chat for the local engine: only the allowed tool is called.
    r = httpx.post(f"{gateway.v1}/responses", timeout=120, json={"model": "local-small", "input": "What is the weather in Paris?",
                                                                   "tools": tools, "tool_choice": choice, "max_output_tokens": 40, "temperature": 0})
    assert r.status_code == 200, r.text
    calls = [item for item in r.json()["output"] if item["type"] == "function_call"]
    assert calls and {c["name"] for c in calls} == {"get_time"}, r.json()["output"]
    # A choice naming a tool that is not there is the client's error, named as it sent it.
    bad = {**choice, "tools": [{"type": "function", "name": "get_date"}]}
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "local-small", "input": "x", "tools": tools, "tool_choice": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice.tools[0].name", r.text


def test_hosted_tools_wait_out_an_open_circuit_rather_than_fail_as_the_clients_fault(tmp_path, fake_provider):
    # The route speaks the API; its fallback does not. With the route's circuit open, a request with
    # a hosted tool gets the route's 503 (retry later), not the stand-in's 400 about its tools.
    dead = fake_provider_section(f"http://127.0.0.1:{free_port()}", name="dead",
                                 extra_keys="responses_api = true\nmax_retries = 0\ncircuit_failures = 1\n")
    plain = fake_provider_section(fake_provider, name="plain")
    policy = '[[rule]]\nname = "default"\nroute = "dead/echo"\nfallback = ["plain/echo"]\n'
    gw = Gateway(tmp_path, f'[server]\nregion = "eu-west"\n\n{dead}\n{plain}\n[policy]\nfile = "{{policy}}"\n', policy=policy)
    try:
        # The first failure opens the circuit; the fallback answers.
        assert client_for(gw).responses.create(model="auto", input="hi").output_text == "echo: hi"
        r = httpx.post(f"{gw.v1}/responses", json={"model": "auto", "input": "news?", "tools": [{"type": "web_search"}]}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable" and int(r.headers["retry-after"]) >= 1, r.text
    finally:
        gw.stop()


def test_over_budget_passthrough_goes_to_the_local_engine(tmp_path, fake_provider):
    section = fake_provider_section(fake_provider, name="oai", extra_keys="responses_api = true\n")
    tenants = '[[tenants]]\nname = "default"\nbudget = { daily_usd = 0.000001, on_exceed = "local" }\n'
    gw = Gateway(tmp_path, gateway_config(section + "\n" + tenants),
                 policy='[[rule]]\nname = "all"\nroute = "oai/echo"\nfallback = ["local"]\n')
    try:
        before = len(responses_sent(fake_provider))
        raw = client_for(gw).responses.with_raw_response.create(model="auto", input="Say hi.", max_output_tokens=8)
        assert raw.headers["x-switchyard-tier"] == "local" and raw.parse().output_text
        assert len(responses_sent(fake_provider)) == before
        # A hosted tool cannot go to the local engine: the budget refuses it (429), not the tools
        # (400, the client's fault). Its worst case is more than the whole day's budget: no
        # Retry-After, since no wait makes it fit.
        r = httpx.post(f"{gw.v1}/responses", json={"model": "auto", "input": "news?", "tools": [{"type": "web_search"}]}, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" and "retry-after" not in r.headers, r.text
        assert "no wait makes it fit" in r.json()["error"]["message"], r.text
        assert len(responses_sent(fake_provider)) == before
    finally:
        gw.stop()


def test_input_items_are_listed_newest_first_and_page(gateway, schemas):
    client = client_for(gateway)
    first = client.responses.create(model="fake/tool", input="Weather in Paris?", tools=WEATHER)
    call = first.output[0]
    r = client.responses.create(model="fake/tool", previous_response_id=first.id, tools=WEATHER, input=[
        {"role": "user", "content": "and then?"},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    listed = httpx.get(f"{gateway.v1}/responses/{r.id}/input_items", timeout=10).json()
    schemas.validate("ResponseItemList", listed)
    # This turn's input only (not the earlier turn's), newest first.
    assert [i["type"] for i in listed["data"]] == ["function_call_output", "message"]
    assert listed["data"][1]["content"] == [{"type": "input_text", "text": "and then?"}]
    assert listed["first_id"] == listed["data"][0]["id"] and listed["has_more"] is False
    sdk = list(client.responses.input_items.list(r.id, order="asc"))
    assert [i.type for i in sdk] == ["message", "function_call_output"]
    page = httpx.get(f"{gateway.v1}/responses/{r.id}/input_items", params={"limit": 1, "order": "asc"}, timeout=10).json()
    assert page["has_more"] is True and len(page["data"]) == 1
    rest = httpx.get(f"{gateway.v1}/responses/{r.id}/input_items", params={"limit": 1, "order": "asc", "after": page["last_id"]}, timeout=10).json()
    assert [i["type"] for i in rest["data"]] == ["function_call_output"] and rest["has_more"] is False
    assert httpx.get(f"{gateway.v1}/responses/resp_nope/input_items", timeout=10).status_code == 404
    assert httpx.get(f"{gateway.v1}/responses/{r.id}/input_items", params={"limit": 0}, timeout=10).status_code == 400
