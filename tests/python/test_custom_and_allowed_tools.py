"""Custom tools (free-form input) and `tool_choice: allowed_tools` as the chat API takes them:
passed through as sent to an OpenAI-style provider, the custom call answered back; the local
engine calls only the allowed tools and refuses custom tools by name."""

import httpx
import openai

from conftest import fake_requests

FUNCTIONS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
             for name in ("get_weather", "get_time")]
CUSTOM = {"type": "custom", "custom": {"name": "apply_patch", "description": "Applies a patch.",
                                       "format": {"type": "grammar", "grammar": {"definition": "start: /.+/", "syntax": "lark"}}}}


def test_custom_tools_and_allowed_tools_reach_an_openai_provider_as_sent(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "custom", "custom": {"name": "apply_patch"}}]}}
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="fake/tool-echo", tools=[CUSTOM, *FUNCTIONS], tool_choice=choice,
                                            messages=[{"role": "user", "content": "*** Begin Patch"}])
    call = answer.choices[0].message.tool_calls[0]
    assert call.type == "custom" and call.custom.name == "apply_patch" and call.custom.input == "*** Begin Patch"
    sent = fake_requests(fake_provider)[before:]
    assert len(sent) == 1 and sent[0]["tools"] == [CUSTOM, *FUNCTIONS] and sent[0]["tool_choice"] == choice
    # The call goes back in the history, answered by its result.
    history = [{"role": "user", "content": "patch it"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "custom", "custom": {"name": "apply_patch", "input": call.custom.input}}]},
               {"role": "tool", "tool_call_id": call.id, "content": "applied"}]
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30, json={"model": "fake/echo", "tools": [CUSTOM], "messages": history})
    assert r.status_code == 200, r.text


def test_a_choice_naming_a_tool_not_defined_is_refused_with_its_path(gateway):
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "apply_patch"}}]}}
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                   json={"model": "fake/echo", "tools": [CUSTOM], "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tool_choice.allowed_tools.tools[0].function.name"


def test_the_local_engine_calls_only_an_allowed_tool(gateway):
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}}
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=120, json={
        "model": "local-small", "temperature": 0, "max_tokens": 40, "tools": FUNCTIONS, "tool_choice": choice,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    assert r.status_code == 200, r.text
    calls = r.json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"] * len(calls) and calls


def test_the_local_engine_refuses_custom_tools_by_name(gateway):
    for body, param in [
        ({"tools": [*FUNCTIONS, CUSTOM]}, "tools[2].type"),
        ({"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "custom", "custom": {"name": "apply_patch", "input": "x"}}]},
                       {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}, "messages[1].tool_calls[0].type"),
    ]:
        r = httpx.post(f"{gateway.v1}/chat/completions", timeout=60,
                       json={"model": "local-small", "messages": [{"role": "user", "content": "x"}], **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert "custom tools are not supported by the local model" in r.json()["error"]["message"]
    # Allowed tools that leave the custom one out are served.
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=120, json={
        "model": "local-small", "max_tokens": 8, "tools": [*FUNCTIONS, CUSTOM], "tool_choice": choice, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
