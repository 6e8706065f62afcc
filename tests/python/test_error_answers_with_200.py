"""Self-hosted servers answer some failures with status 200 and only an error in the body (LM
Studio's "Unexpected endpoint", TGI's "Model unloaded", `{"object": "error"}`). That is a failure,
not an answer: on chat it is 502 with the server's own message (and the rule's fallback takes the
request); on the passed-through endpoints (Responses, embeddings) it is no longer handed to the
client as a billed 200."""

import httpx
import pytest

from conftest import Gateway, accounting_record, fake_provider_section, gateway_config, remote_only_config


def script(fake_provider, *faults):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": list(faults)}).raise_for_status()


def start_gateway(path, fake_provider):
    section = fake_provider_section(fake_provider, extra_keys="max_retries = 0\ncircuit_failures = 100\nresponses_api = true\n")
    policy = '[[rule]]\nname = "falls-back"\nroute = "fake/echo"\nfallback = ["fake/shred"]\n'
    return Gateway(path, f'[server]\nregion = "eu-west"\n\n{section}\n[policy]\nfile = "{{policy}}"\n', policy)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    gw = start_gateway(tmp_path_factory.mktemp("err200"), fake_provider)
    yield gw
    gw.stop()


@pytest.mark.parametrize("body", [
    {"error": "Model unloaded due to inactivity"},
    {"error": {"message": "Model unloaded due to inactivity", "type": "server_error"}},
    {"object": "error", "message": "Model unloaded due to inactivity", "type": "InternalServerError", "code": 500},
])
def test_a_chat_error_sent_with_200_is_a_502_with_its_message(gateway, fake_provider, body):
    script(fake_provider, {"status": 200, "body": body})
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30, json={"model": "fake/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502, r.text
    assert "Model unloaded due to inactivity" in r.json()["error"]["message"], r.text


def test_the_rules_fallback_takes_a_request_its_route_answered_with_an_error(gateway, fake_provider):
    script(fake_provider, {"status": 200, "body": {"error": "Model unloaded due to inactivity"}})
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30, json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] == "fake/shred"


def test_a_passed_through_responses_error_with_200_is_not_a_billed_answer(gateway, fake_provider):
    script(fake_provider, {"status": 200, "body": {"error": "Unexpected endpoint or method. (POST /v1/responses)"}})
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "fake/echo", "input": "hi"})
    assert r.status_code == 502, r.text
    assert "Unexpected endpoint" in r.json()["error"]["message"]
    record = accounting_record(gateway, r.headers["x-request-id"])
    assert record["status"] == "502" and float(record["cost_usd"]) == 0.0, record


def test_a_passed_through_embeddings_error_with_200_is_not_a_billed_answer(gateway, fake_provider):
    script(fake_provider, {"status": 200, "body": {"error": "No models loaded. Please load a model first."}})
    r = httpx.post(f"{gateway.v1}/embeddings", timeout=30, json={"model": "fake/embed", "input": "hi"})
    assert r.status_code == 502, r.text
    assert "No models loaded" in r.json()["error"]["message"]


def test_a_failed_responses_object_is_still_passed_on(gateway, fake_provider):
    # A Responses object that failed carries `error` beside its own fields: it is an answer.
    failed = {"id": "resp_1", "object": "response", "status": "failed", "output": [], "model": "echo",
              "error": {"code": "server_error", "message": "The model failed."}, "created_at": 1}
    script(fake_provider, {"status": 200, "body": failed})
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "fake/echo", "input": "hi"})
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text


@pytest.mark.parametrize("path,body", [
    ("/chat/completions", {"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("/responses", {"model": "fake/echo", "stream": True, "input": "hi"}),
])
def test_a_stream_answered_with_an_error_body_is_a_502_with_its_message(gateway, fake_provider, path, body):
    # No events at all, only the error: the client gets the server's words, and no bill.
    script(fake_provider, {"status": 200, "body": {"error": "Model unloaded due to inactivity"}})
    r = httpx.post(f"{gateway.v1}{path}", timeout=30, json=body)
    assert r.status_code == 502, r.text
    assert "Model unloaded due to inactivity" in r.json()["error"]["message"], r.text
    record = accounting_record(gateway, r.headers["x-request-id"])
    assert record["status"] == "502" and float(record["cost_usd"]) == 0.0, record


def test_a_stream_answered_with_an_error_body_falls_back(gateway, fake_provider):
    script(fake_provider, {"status": 200, "body": {"error": "Model unloaded due to inactivity"}})
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        assert r.headers["x-switchyard-target"] == "fake/shred"
        r.read()


@pytest.fixture
def fresh_gateway(tmp_path, fake_provider):
    """Configured as the module's: that one has failed often enough to open fake/echo's circuit."""
    gw = start_gateway(tmp_path, fake_provider)
    yield gw
    gw.stop()


def test_a_passed_through_stream_opening_with_an_error_event_is_a_502_or_its_fallbacks_answer(fresh_gateway, fake_provider):
    # OpenAI reports some failures as an `error` event in a stream it opened with 200: before any
    # output, that is a failure with its own status, as on chat, not a 200 holding only the error.
    gateway = fresh_gateway
    script(fake_provider, {"error_event": "The server had an error while processing your request."})
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "fake/echo", "stream": True, "input": "hi"})
    assert r.status_code == 502, r.text
    assert "The server had an error" in r.json()["error"]["message"], r.text
    record = accounting_record(gateway, r.headers["x-request-id"])
    assert record["status"] == "502" and float(record["cost_usd"]) == 0.0, record
    # Under a rule, the fallback answers it.
    script(fake_provider, {"error_event": "The server had an error while processing your request."})
    with httpx.stream("POST", f"{gateway.v1}/responses", timeout=30, json={"model": "auto", "stream": True, "input": "hi"}) as r:
        body = r.read().decode()
        assert r.status_code == 200 and r.headers["x-switchyard-target"] == "fake/shred", body
    assert "event: response.completed" in body and "event: error" not in body, body
    # Its `code` says what it stands for: a rate limit is a 429 the client can wait out.
    script(fake_provider, {"error_event": "Rate limit reached for requests", "code": "rate_limit_exceeded"})
    r = httpx.post(f"{gateway.v1}/responses", timeout=30, json={"model": "fake/echo", "stream": True, "input": "hi"})
    assert r.status_code == 429 and "Rate limit reached" in r.json()["error"]["message"], r.text


def test_an_embeddings_answer_without_vectors_is_not_an_answer(gateway, fake_provider):
    # A server without the route answers 200 `{"detail": "Not Found"}` (FastAPI's shape).
    script(fake_provider, {"status": 200, "body": {"detail": "Not Found"}})
    r = httpx.post(f"{gateway.v1}/embeddings", timeout=30, json={"model": "fake/embed", "input": "hi"})
    assert r.status_code == 502 and "Not Found" in r.json()["error"]["message"], r.text
