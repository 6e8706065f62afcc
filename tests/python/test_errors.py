"""Every error answer: status, OpenAI error body (validated against the spec), and the SDK's
exception class."""

import threading
import time

import httpx
import openai
import pytest

from conftest import Gateway, gateway_config, sse_events

HI = [{"role": "user", "content": "Hi"}]


def post(gateway, body, **kw):
    return httpx.post(f"{gateway.v1}/chat/completions", content=body if isinstance(body, (bytes, str)) else None,
                      json=None if isinstance(body, (bytes, str)) else body, timeout=60, **kw)


@pytest.mark.parametrize(
    "body,status,code,param",
    [
        ("{not json", 400, None, None),
        ({"model": "auto"}, 400, None, "messages"),
        ({"model": "auto", "messages": []}, 400, None, "messages"),
        ({"model": "auto", "messages": "hello"}, 400, None, "messages"),
        ({"model": "auto", "messages": HI, "temperature": "hot"}, 400, None, "temperature"),
        ({"model": "auto", "messages": HI, "max_tokens": "many"}, 400, None, "max_tokens"),
        ({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}, 400, None, "messages[0].role"),
        ({"model": 42, "messages": HI}, 400, None, "model"),
        ({"model": "no-such-model", "messages": HI}, 404, "model_not_found", "model"),
    ],
)
def test_bad_requests_get_openai_errors(gateway, schemas, body, status, code, param):
    r = post(gateway, body)
    assert r.status_code == status, r.text
    schemas.validate("ErrorResponse", r.json())
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code
    assert err["param"] == param
    assert err["message"]


def test_sdk_raises_the_matching_exceptions(gateway):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=HI)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[])
    assert e.value.param == "messages"


def test_body_over_the_limit_is_413(gateway, schemas):
    big = b'{"model":"auto","messages":[{"role":"user","content":"' + b"a" * (4 * 1024 * 1024 + 10) + b'"}]}'
    r = post(gateway, big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    schemas.validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == "request_too_large"


def test_wrong_method_is_405_and_unknown_path_404(gateway, schemas):
    r = httpx.get(f"{gateway.v1}/chat/completions")
    assert r.status_code == 405
    schemas.validate("ErrorResponse", r.json())
    r = httpx.post(f"{gateway.v1}/no/such/thing", json={})
    assert r.status_code == 404
    schemas.validate("ErrorResponse", r.json())


def test_prompt_plus_max_tokens_beyond_context_names_both_numbers(gateway, schemas):
    r = post(gateway, {"model": "auto", "messages": HI, "max_tokens": 5000})
    assert r.status_code == 400
    schemas.validate("ErrorResponse", r.json())
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "1024" in err["message"], "4096 cells over 4 sequences: 1024 per request"
    prompt_tokens = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "auto", "messages": HI, "max_tokens": 1}, timeout=60).json()["usage"]["prompt_tokens"]
    assert str(prompt_tokens + 5000) in err["message"], err["message"]


def test_a_provider_error_body_opening_with_a_byte_order_mark_keeps_its_message_and_code(gateway, fake_provider):
    body = '\ufeff{"error": {"message": "context too long: custom upstream message", "type": "invalid_request_error", "param": null, "code": "context_length_exceeded"}}'
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": 400, "body": body}]}).raise_for_status()
    r = post(gateway, {"model": "fake/echo", "messages": HI})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded", err
    assert err["message"].startswith("context too long: custom upstream message"), err


@pytest.mark.parametrize("status,body", [
    # vLLM
    (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).",
           "type": "BadRequestError", "param": None, "code": 400}),
    # llama-server
    (400, {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                     "type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}}),
    # TGI
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 500 `max_new_tokens`",
           "error_type": "validation"}),
    (422, {"error": "Input validation error: `inputs` must have less than 4096 tokens. Given: 5000", "error_type": "validation"}),
    # vLLM's engine, SGLang, LM Studio
    (400, {"object": "error", "message": "The decoder prompt (length 5000) is longer than the maximum model length of 4096.", "type": "BadRequestError", "code": 400}),
    (400, {"object": "error", "message": "Requested token count exceeds the model's maximum context length", "type": "BadRequestError", "code": 400}),
    (400, {"error": {"message": "The input (5000 tokens) is longer than the model's context length (4096 tokens).", "type": "invalid_request_error"}}),
    (400, {"error": "Trying to keep the first 5000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens."}),
])
def test_a_self_hosted_servers_context_overflow_is_context_length_exceeded(gateway, fake_provider, status, body):
    # Clients that trim a conversation look for the code; each server words it its own way.
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": status, "body": body}]}).raise_for_status()
    r = post(gateway, {"model": "fake/echo", "messages": HI})
    err = r.json()["error"]
    assert r.status_code == 400 and (err["type"], err["code"]) == ("invalid_request_error", "context_length_exceeded"), err


def test_a_vllm_error_type_and_numeric_code_are_put_in_openai_terms(gateway, fake_provider):
    body = {"object": "error", "message": "temperature must be non-negative", "type": "BadRequestError", "param": None, "code": 400}
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": 400, "body": body}]}).raise_for_status()
    r = post(gateway, {"model": "fake/echo", "messages": HI})
    err = r.json()["error"]
    assert r.status_code == 400 and (err["type"], err["code"]) == ("invalid_request_error", None), err
    assert err["message"] == "temperature must be non-negative"


def test_long_prompt_alone_beyond_context_is_refused(gateway):
    words = " ".join(["banana"] * 5000)
    r = post(gateway, {"model": "auto", "messages": [{"role": "user", "content": words}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # Far too long to tokenize: refused on a count that is only a lower bound, and said to be one.
    r = post(gateway, {"model": "auto", "messages": [{"role": "user", "content": "x" * 1_000_000}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded", err
    assert "are at least" in err["message"] and "you requested" not in err["message"], err["message"]


@pytest.mark.parametrize(
    "model,status,code",
    [("fake/fail", 502, "upstream_error"), ("fake/ratelimit", 429, "rate_limit_exceeded"), ("fake/reject", 400, "bad_thing")],
)
def test_upstream_errors_map_to_openai_errors(gateway, schemas, model, status, code):
    r = post(gateway, {"model": model, "messages": HI})
    assert r.status_code == status, r.text
    schemas.validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == code
    # The error names the rule that routed it and the target that failed it.
    assert (r.headers["x-switchyard-rule"], r.headers["x-switchyard-target"], r.headers["x-switchyard-tier"]) == ("explicit", model, "remote")
    assert 0 <= float(r.headers["x-switchyard-complexity"]) <= 1 and r.headers["x-switchyard-cache"] == "miss"
    if status == 429:
        assert r.headers["retry-after"] == "7"
    r = post(gateway, {"model": model, "messages": HI, "stream": True})
    assert r.status_code == status, "stream failures before the first byte get a real status"
    assert r.headers["x-switchyard-target"] == model


def test_full_queue_answers_429_engine_overloaded(tmp_path, schemas):
    gw = Gateway(tmp_path, gateway_config(parallel=1).replace("queue = 16", "queue = 1"))
    try:
        long = {"model": "auto", "stream": True, "temperature": 0, "max_tokens": 1500,
                "messages": [{"role": "user", "content": "Count from 1 to 1000."}]}
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=long, timeout=120) as running:
            # The only slot is busy. Keep the iterator: a discarded one is collected at once, and
            # closing it closes the connection, which cancels the request within a few tokens.
            lines = running.iter_lines()
            next(lines)
            second = []
            queued = threading.Thread(target=lambda: second.append(httpx.post(
                f"{gw.v1}/chat/completions", json={**long, "stream": False, "max_tokens": 1}, timeout=120)))
            queued.start()
            deadline = time.monotonic() + 60
            while httpx.get(f"{gw.base}/readyz").json()["engine"]["queued"] < 1:
                assert time.monotonic() < deadline and not second, (
                    f"second request never queued: {second[0].status_code if second else 'still waiting'}, "
                    f"engine {httpx.get(f'{gw.base}/readyz').json()['engine']}")
                time.sleep(0.01)  # poll interval; the condition ends the wait
            r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "auto", "messages": HI}, timeout=30)
            assert r.status_code == 429
            schemas.validate("ErrorResponse", r.json())
            assert r.json()["error"]["code"] == "engine_overloaded"
            assert int(r.headers["retry-after"]) >= 1
        queued.join(timeout=120)
    finally:
        gw.stop()
