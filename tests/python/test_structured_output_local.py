"""Structured output and tools on the local engine, enforced by grammar-constrained sampling:
50 random JSON Schemas all answered with valid, complete instances by the real 135M model;
json_object; `chat.completions.parse` with a Pydantic model; tool calls (whole and streamed)."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from conftest import Gateway, gateway_config, parse_chunks, sse_events

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("so"), gateway_config(parallel=4))
    yield gw
    gw.stop()


def random_schema(rng, depth=0):
    """A random schema using what structured output supports: objects (nested, required),
    arrays with bounds, enums, consts, integer ranges, numbers, booleans, nullable types."""
    kinds = ["string", "integer", "number", "boolean", "enum", "range", "nullable"]
    if depth < 2:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.choice([8, 16, 32])}
    if kind == "integer":
        return {"type": "integer"}
    if kind == "number":
        return {"type": "number"}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", 1, 2, True], k=rng.randint(2, 4))}
    if kind == "range":
        lo = rng.randint(-5, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 40)}
    if kind == "nullable":
        return {"type": [rng.choice(["string", "integer", "boolean"]), "null"]}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
    names = rng.sample(["id", "name", "title", "count", "price", "tags", "color", "size", "active", "owner", "note"],
                       k=rng.randint(1, 4))
    props = {n: random_schema(rng, depth + 1) for n in names}
    return {"type": "object", "properties": props, "required": rng.sample(names, k=rng.randint(0, len(names))),
            "additionalProperties": False}


def test_fifty_random_schemas_get_valid_complete_instances(local):
    rng = random.Random(20261202)
    schemas = [random_schema(rng) for _ in range(50)]
    # Top-level objects, as the API requires for json_schema.
    schemas = [s if s.get("type") == "object" else {"type": "object", "properties": {"value": s},
                                                    "required": ["value"], "additionalProperties": False}
               for s in schemas]

    def ask(i):
        body = {"model": "auto", "messages": [{"role": "user", "content": f"Fill in example data #{i}."}],
                "response_format": {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schemas[i], "strict": True}},
                "max_tokens": 400, "temperature": 0.7, "seed": i}
        r = httpx.post(f"{local.v1}/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(50)))
    for schema, choice in zip(schemas, answers):
        assert choice["finish_reason"] == "stop", (schema, choice)
        instance = json.loads(choice["message"]["content"])
        jsonschema.validate(instance, schema)
        # Complete: every declared property is there, required or not.
        assert set(instance) == set(schema["properties"])


def test_json_object_is_a_parseable_object(local):
    # Greedy: at the API's default temperature (1) the model sometimes rambled past 300 tokens,
    # and the test then failed now and again for what sampling drew, not for what the engine did.
    r = httpx.post(f"{local.v1}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "Describe a cat as JSON."}],
        "response_format": {"type": "json_object"}, "max_tokens": 300, "temperature": 0}, timeout=120)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_json_object_is_closed_inside_a_small_token_budget(local, seed):
    # 40 tokens are far too few for what the prompt asks: the answer is closed so that it parses,
    # and reads as cut (`length`), as it was.
    r = httpx.post(f"{local.v1}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "Describe a cat in great detail as JSON, with many nested fields and lists."}],
        "response_format": {"type": "json_object"}, "max_tokens": 40, "temperature": 1.0, "seed": seed}, timeout=120)
    body = r.json()
    choice = body["choices"][0]
    # `stop` only for an object the model closed itself before the budget ran out.
    assert choice["finish_reason"] == "length" or body["usage"]["completion_tokens"] < 40, body
    assert isinstance(json.loads(choice["message"]["content"]), dict), body
    assert body["usage"]["completion_tokens"] <= 40


def test_streamed_json_object_is_closed_inside_the_budget(local):
    with httpx.stream("POST", f"{local.v1}/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "List every cat breed you know as JSON."}],
            "response_format": {"type": "json_object"}, "max_tokens": 24, "temperature": 1.0, "seed": 7, "stream": True,
            "stream_options": {"include_usage": True}}, timeout=120) as r:
        chunks = parse_chunks(sse_events(r))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert isinstance(json.loads(text), dict), text
    assert chunks[-1]["usage"]["completion_tokens"] <= 24


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]


def test_sdk_parse_with_a_pydantic_model(local):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.parse(model="auto", messages=[{"role": "user", "content": "Invent a person."}],
                                      response_format=Person, max_tokens=300)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_required_tool_choice_gives_a_well_formed_call(local):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       tools=WEATHER, tool_choice="required", max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER[0]["function"]["parameters"])


@pytest.mark.parametrize("parameters", [None, {}])
def test_a_tool_without_parameters_is_called_with_none(local, parameters):
    # As the API reads it: no `parameters` (or `{}`) is a function without arguments, so its call's
    # arguments are an empty object (the grammar allows whitespace inside), not whatever JSON the
    # model makes up.
    function = {"name": "now", "description": "The current time"} | ({} if parameters is None else {"parameters": parameters})
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "What time is it?"}],
                                       tools=[{"type": "function", "function": function}], tool_choice="required", max_tokens=32)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and json.loads(choice.message.tool_calls[0].function.arguments) == {}, choice


@pytest.mark.parametrize("stop", ["Paris", '"'])
def test_a_stop_string_never_cuts_a_tool_call(local, stop):
    # Stop strings end a text answer; a call's arguments are the grammar's, whole or cut by max_tokens.
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       tools=WEATHER, tool_choice="required", stop=stop, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), WEATHER[0]["function"]["parameters"])


def test_a_tool_whose_parameters_are_not_an_objects_schema_is_refused(local):
    r = httpx.post(f"{local.v1}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    assert "Invalid schema for function 'f'" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_before_its_name_leaks_no_wrapper_text(local, stream):
    body = {"model": "auto", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": WEATHER,
            "tool_choice": "required", "max_tokens": 3, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{local.v1}/chat/completions", json=body, timeout=120) as r:
            chunks = parse_chunks(sse_events(r))
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    else:
        choice = httpx.post(f"{local.v1}/chat/completions", json=body, timeout=120).json()["choices"][0]
        content, finish = choice["message"]["content"] or "", [choice["finish_reason"]]
    assert finish == ["length"]
    assert content == "", f"the engine's call wrapper reached the client: {content!r}"


def test_streamed_tool_call_arguments_come_in_openai_deltas(local, schemas):
    body = {"model": "auto", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": WEATHER,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "max_tokens": 100, "stream": True}
    with httpx.stream("POST", f"{local.v1}/chat/completions", json=body, timeout=120) as r:
        chunks = parse_chunks(sse_events(r))
    for c in chunks:
        schemas.validate("CreateChatCompletionStreamResponse", c)
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"].startswith("call_") and deltas[0]["index"] == 0
    pieces = [d["function"]["arguments"] for d in deltas]
    assert len([p for p in pieces if p]) >= 2
    jsonschema.validate(json.loads("".join(pieces)), WEATHER[0]["function"]["parameters"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_a_call_reported_complete_always_has_whole_arguments(local):
    # Whatever max_tokens cuts, `finish_reason: tool_calls` means arguments that parse; a cut
    # just after the arguments' own `}` (the wrapper's still to come) is `length`.
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    # Arguments ending in a string, so that their `}` and the wrapper's are separate tokens.
    city_only = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    args = dict(model="auto", messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=city_only,
                tool_choice="required", temperature=0)
    whole = client.chat.completions.create(max_tokens=100, **args)
    assert whole.choices[0].finish_reason == "tool_calls"
    needed = whole.usage.completion_tokens
    for max_tokens in range(needed - 4, needed + 1):
        choice = client.chat.completions.create(max_tokens=max_tokens, **args).choices[0]
        if choice.finish_reason == "tool_calls":
            assert json.loads(choice.message.tool_calls[0].function.arguments), (max_tokens, choice)
        else:
            assert choice.finish_reason == "length", (max_tokens, choice)
    assert choice.finish_reason == "tool_calls"
    # Streamed, cut one token short: `length`, and the arguments sent are the model's whole object
    # (the brace held back is theirs); a forced call opens without any `content`.
    with httpx.stream("POST", f"{local.v1}/chat/completions", json={**args, "max_tokens": needed - 1, "stream": True}, timeout=120) as r:
        chunks = parse_chunks(sse_events(r))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}, chunks[0]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"], finish


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_beside_tools_follows_the_response_format(local, stream):
    """With tool_choice auto, the model may call a tool or answer; an answer that is not a call
    must still follow response_format (it was free text)."""
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    prompts = ["Invent a person: a name and an age.", "Describe a fictional pianist as JSON.",
               "Who is older, a child or a grandparent? Make up one.", "Tell me about a character called Bob."]
    answers, calls = 0, 0
    for prompt in prompts:
        args = dict(model="auto", messages=[{"role": "user", "content": prompt}], tools=WEATHER, tool_choice="auto",
                    response_format=fmt, max_tokens=60, temperature=0)
        if stream:
            content, tool_args, finish = "", "", None
            for chunk in client.chat.completions.create(stream=True, **args):
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                content += delta.content or ""
                tool_args += "".join(c.function.arguments or "" for c in delta.tool_calls or [])
                finish = chunk.choices[0].finish_reason or finish
        else:
            choice = client.chat.completions.create(**args).choices[0]
            content, finish = choice.message.content or "", choice.finish_reason
            tool_args = "".join(c.function.arguments for c in choice.message.tool_calls or [])
        if finish == "tool_calls":
            calls += 1
            assert content == ""
            jsonschema.validate(json.loads(tool_args), WEATHER[0]["function"]["parameters"])
        else:
            answers += 1
            assert finish == "stop" and tool_args == "", (prompt, finish, content)
            jsonschema.validate(json.loads(content), PERSON)
    assert answers >= 1, f"every prompt was answered with a call ({calls}): the answer branch went untested"


SEARCH = [{"type": "function", "function": {"name": "search", "description": "web search", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "out", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        "required": ["name", "arguments"], "additionalProperties": False}}},
    # A union of objects at the root: each of them opens the answer.
    {"type": "json_schema", "json_schema": {"name": "out", "schema": {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
         "required": ["name", "arguments"], "additionalProperties": False},
        {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"], "additionalProperties": False}]}}}])
def test_an_answer_never_passes_for_a_call_with_broken_arguments(local, fmt):
    """A conversation that taught the model to answer `{"name":"search","arguments":"none"}`: the
    call's exact opening, then the answer's JSON. It was returned as a call whose arguments were
    the string "none"; a call's arguments must follow the tool's parameters."""
    shot = {"role": "assistant", "content": '{"name":"search","arguments":"none"}'}
    messages = [{"role": "system", "content": "You answer only JSON."}, {"role": "user", "content": "x"}, shot,
                {"role": "user", "content": "x"}, shot, {"role": "user", "content": "x"}]
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    choice = client.chat.completions.create(model="auto", messages=messages, tools=SEARCH, tool_choice="auto",
                                            response_format=fmt, max_tokens=200, temperature=0).choices[0]
    if choice.finish_reason == "tool_calls":
        jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), SEARCH[0]["function"]["parameters"])
    else:
        assert choice.finish_reason == "stop" and not choice.message.tool_calls
        answer = json.loads(choice.message.content)
        if fmt["type"] == "json_schema":
            jsonschema.validate(answer, fmt["json_schema"]["schema"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_object_answer_beside_tools_is_closed_inside_the_budget(local, stream):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    answers = 0
    for prompt in ["Invent a person: a name and an age.", "Tell me about a character called Bob."]:
        for max_tokens in (4, 8, 12):
            args = dict(model="auto", messages=[{"role": "user", "content": prompt}], tools=SEARCH, tool_choice="auto",
                        response_format={"type": "json_object"}, max_tokens=max_tokens, temperature=0)
            if stream:
                content, called, finish = "", False, None
                for chunk in client.chat.completions.create(stream=True, **args):
                    if chunk.choices:
                        content += chunk.choices[0].delta.content or ""
                        called = called or bool(chunk.choices[0].delta.tool_calls)
                        finish = chunk.choices[0].finish_reason or finish
            else:
                choice = client.chat.completions.create(**args).choices[0]
                content, called, finish = choice.message.content or "", bool(choice.message.tool_calls), choice.finish_reason
            if content:
                answers += 1
                assert finish in ("stop", "length") and not called, (prompt, max_tokens, finish, content)
                assert isinstance(json.loads(content), dict), (prompt, max_tokens, content)
    assert answers >= 1, "every answer was a call: the closing went untested"


def test_tool_results_are_answered_in_text(local):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"C\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model="auto", messages=messages, tools=WEATHER, tool_choice="none", max_tokens=30)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_responses_api_text_format_on_the_local_engine(local):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.responses.create(model="auto", input="A big city.", max_output_tokens=200,
                                text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize("schema,param", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}, "response_format.json_schema.schema"),
    ({"type": "object", "allOf": [{}]}, "response_format.json_schema.schema"),
])
def test_schemas_the_grammar_cannot_enforce_are_refused(local, schema, param):
    r = httpx.post(f"{local.v1}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert "not supported" in r.json()["error"]["message"]


def test_sdk_chat_stream_helper_parses_the_final_structured_answer(local):
    client = openai.OpenAI(base_url=local.v1, api_key="unused", max_retries=0)
    with client.chat.completions.stream(model="auto", messages=[{"role": "user", "content": "Invent a person."}],
                                        response_format=Person, max_tokens=300) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content
    assert isinstance(final.choices[0].message.parsed, Person)


def test_sdk_async_client_streams_tool_call_arguments(local):
    import asyncio

    async def run():
        client = openai.AsyncOpenAI(base_url=local.v1, api_key="unused", max_retries=0)
        async with client.chat.completions.stream(model="auto", messages=[{"role": "user", "content": "Weather in Rome?"}],
                                                  tools=WEATHER, tool_choice="required", max_tokens=100) as stream:
            done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
            final = await stream.get_final_completion()
        return done, final

    done, final = asyncio.run(run())
    assert len(done) == 1 and done[0].name == "get_weather"
    assert json.loads(done[0].arguments) == json.loads(final.choices[0].message.tool_calls[0].function.arguments)
