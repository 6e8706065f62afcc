"""Earlier turns sent as `item_reference` items — how the Vercel AI SDK's default OpenAI
provider (the Responses API with `store` on) sends every conversation's second turn, and a
tool loop's next step — stand for the items they name, output items of responses this tenant
stored. They used to be a 400, so such an app failed on its second turn on every target.

A reference resolves on any replica sharing Redis (tested beside the replica test of
`previous_response_id`, in test_responses_api.py), never to another tenant's items (404
`item_not_found`, as for an id that was never issued), and carries the privacy tags of the
response it came from, as a `previous_response_id` continuation does (that test is beside the
`previous_response_id` one, in test_responses_api.py)."""

import secrets

import httpx
import openai
import pytest

from conftest import Gateway, fake_provider_section, fake_requests, new_virtual_key, remote_only_config


def client_for(gw, key="unused"):
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def reference(item_id):
    return {"type": "item_reference", "id": item_id}


def user(text):
    return {"role": "user", "content": text}


def text_of(content):
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def last_chat_messages(fake_provider, marker):
    """(role, text) of the last chat request the fake got that carried `marker`."""
    sent = [b for b in fake_requests(fake_provider) if any(marker in str(m.get("content")) for m in b.get("messages", []))]
    return [(m["role"], text_of(m.get("content"))) for m in sent[-1]["messages"]]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    (key_a, hash_a), (key_b, hash_b) = new_virtual_key(), new_virtual_key()
    tenants = f'[[tenants]]\nname = "a"\nkeys = ["{hash_a}"]\n\n[[tenants]]\nname = "b"\nkeys = ["{hash_b}"]\n'
    passthrough = fake_provider_section(fake_provider, name="oai", extra_keys="responses_api = true\n")
    gw = Gateway(tmp_path_factory.mktemp("item-refs"), remote_only_config(fake_provider, passthrough + tenants),
                 policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    gw.key_a, gw.key_b = key_a, key_b
    yield gw
    gw.stop()


def test_a_second_turn_that_references_the_first_answer_is_served_with_it(gateway, fake_provider):
    client = client_for(gateway, gateway.key_a)
    word = secrets.token_hex(4)
    first = client.responses.create(model="fake/echo", input=f"hello {word}")
    second = client.responses.create(model="fake/echo", input=[user(f"hello {word}"), reference(first.output[0].id), user("and again")])
    assert second.output_text == "echo: and again"
    assert last_chat_messages(fake_provider, f"hello {word}") == [("user", f"hello {word}"), ("assistant", f"echo: hello {word}"), ("user", "and again")]
    # The input items of the new turn list what the reference stood for.
    listed = client.responses.input_items.list(second.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in listed] == [("message", "user"), ("message", "assistant"), ("message", "user")]


def test_a_tool_loop_step_references_the_call_it_answers(gateway, fake_provider):
    client = client_for(gateway, gateway.key_a)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model="fake/tool", input="weather in Paris?", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    word = secrets.token_hex(4)
    second = client.responses.create(model="fake/echo", tools=tools, input=[
        user("weather in Paris?"), reference(call.id), {"type": "function_call_output", "call_id": call.call_id, "output": f"sunny {word}"}])
    assert second.status == "completed"
    sent = [b for b in fake_requests(fake_provider) if any(f"sunny {word}" in str(m.get("content")) for m in b.get("messages", []))][-1]
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert sent["messages"][2] == {"role": "tool", "content": f"sunny {word}", "tool_call_id": call.call_id}


def test_a_passed_through_request_gets_the_items_not_the_references(gateway, fake_provider):
    client = client_for(gateway, gateway.key_a)
    first = client.responses.create(model="oai/echo", input="first turn")
    client.responses.create(model="oai/echo", input=[user("first turn"), reference(first.output[0].id), user("second turn")])
    sent = [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json() if r["path"] == "/v1/responses"][-1]
    assert [item.get("type", "message") for item in sent["input"]] == ["message", "message", "message"]
    assert sent["input"][1]["id"] == first.output[0].id and sent["input"][1]["content"][0]["text"] == first.output_text


def test_a_referenced_reasoning_item_is_left_out(gateway, fake_provider):
    # A provider passed the request (with store off) could not look the reasoning item up.
    client = client_for(gateway, gateway.key_a)
    first = client.responses.create(model="fake/reasoner", input="think first")
    assert [item.type for item in first.output] == ["reasoning", "message"]
    second = client.responses.create(model="oai/echo", input=[user("think first"), *[reference(item.id) for item in first.output], user("next")])
    assert second.output_text == "echo: next"
    sent = [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json() if r["path"] == "/v1/responses"][-1]
    assert [item.get("type", "message") for item in sent["input"]] == ["message", "message", "message"]
    assert sent["input"][1]["content"][0]["text"] == "done"


@pytest.mark.parametrize("who", ["another tenant", "nobody"])
def test_an_item_of_another_tenant_or_none_is_not_found(gateway, who):
    first = client_for(gateway, gateway.key_a).responses.create(model="fake/echo", input="private to a")
    item_id = first.output[0].id if who == "another tenant" else "msg_doesnotexist"
    r = httpx.post(f"{gateway.v1}/responses", headers={"authorization": f"Bearer {gateway.key_b}"}, timeout=30,
                   json={"model": "fake/echo", "input": [user("x"), reference(item_id)]})
    assert r.status_code == 404, r.text
    assert r.json()["error"] == {"message": f"Item with id '{item_id}' not found.", "type": "invalid_request_error", "param": "input[1]", "code": "item_not_found"}
    r = httpx.post(f"{gateway.v1}/responses", headers={"authorization": f"Bearer {gateway.key_b}"}, timeout=30,
                   json={"model": "fake/echo", "input": [{"type": "item_reference"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].id", r.text
