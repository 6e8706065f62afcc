"""Remote-path resilience through the official SDK: retryable failures (500, 529, 429 with a short
Retry-After, a stream dropped before its first event) are retried with backoff and the fake's log
proves the attempt count; non-retryable ones and long Retry-After are not; usage is always asked
for upstream; Azure's URL scheme and `api-key` header."""

import concurrent.futures
import email.utils
import json
import socket
import time

import httpx
import openai
import pytest

from conftest import (FAKE_BIN, Gateway, Process, accounting_record, fake_provider_section, fake_requests, gateway_config,
                      parse_chunks, remote_only_config, sse_events, wait_for)
from test_metrics_and_audit import metric_samples, sample


def script(fake_provider, *faults):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": list(faults)}).raise_for_status()


def attempts_since(fake_provider, before):
    return len(fake_requests(fake_provider)) - before


def ask(gateway, model="fake/echo", **extra):
    return httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "ping"}], **extra})


def test_transient_failures_are_retried_until_success(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"status": 500}, {"status": 529})
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="fake/echo", messages=[{"role": "user", "content": "ping"}])
    assert r.choices[0].message.content == "echo: ping"
    assert attempts_since(fake_provider, before) == 3


def test_retries_run_out_and_map_to_502(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"status": 503}, {"status": 502}, {"status": 500})
    r = ask(gateway)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert attempts_since(fake_provider, before) == 3, "first attempt + max_retries (2)"


def test_429_with_short_retry_after_is_retried(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"status": 429, "retry_after": "0"})
    r = ask(gateway)
    assert r.status_code == 200
    assert attempts_since(fake_provider, before) == 2


def test_429_with_long_retry_after_goes_back_at_once_with_its_retry_after(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    limited = {"error": {"message": "Rate limit reached for requests", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    script(fake_provider, {"status": 429, "retry_after": "60", "body": limited})
    r = ask(gateway)
    assert r.status_code == 429 and r.json()["error"] == limited["error"], "the provider's own error"
    assert r.headers["retry-after"] == "60"
    assert attempts_since(fake_provider, before) == 1


def test_retry_after_as_a_date_or_in_milliseconds_is_read(gateway, fake_provider):
    for fault, low, high in [({"retry_after": email.utils.formatdate(time.time() + 3600, usegmt=True)}, 3590, 3600),
                             ({"retry_after_ms": "600000"}, 600, 600)]:
        before = len(fake_requests(fake_provider))
        script(fake_provider, {"status": 429, **fault})
        r = ask(gateway)
        assert r.status_code == 429, r.text
        assert low <= int(r.headers["retry-after"]) <= high, (fault, r.headers["retry-after"])
        assert attempts_since(fake_provider, before) == 1, "longer than retry_max_wait_ms: not waited for"


def test_a_spent_quota_is_not_retried_and_its_error_is_passed_on(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    quota = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    script(fake_provider, {"status": 429, "body": quota})
    r = ask(gateway)
    assert r.status_code == 429 and r.json()["error"] == quota["error"]
    assert "retry-after" not in r.headers, "the provider named no wait"
    assert attempts_since(fake_provider, before) == 1


@pytest.mark.parametrize("body,says", [
    ({"error": {"code": 400, "message": "the request exceeds the available context size", "type": "exceed_context_size_error"}},
     "exceeds the available context size"),
    ({"object": "error", "message": "maximum context length is 2048 tokens", "type": "BadRequestError", "param": None, "code": 400},
     "maximum context length is 2048"),
    ({"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, "field required"),
    ("model is not loaded yet", "model is not loaded yet"),
    # Google's Gemini API (its OpenAI-compatible endpoint too) wraps the error in a list.
    ([{"error": {"code": 400, "message": "Invalid JSON payload received. Unknown name \"foo\"", "status": "INVALID_ARGUMENT"}}],
     "Unknown name"),
])
def test_self_hosted_servers_error_shapes_reach_the_client(gateway, fake_provider, body, says):
    script(fake_provider, {"status": 400, "body": body})
    r = ask(gateway)
    assert r.status_code == 400
    error = r.json()["error"]
    assert says in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_a_stream_the_provider_ends_early_ends_with_an_error(gateway, fake_provider):
    script(fake_provider, {"cut": True})
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="fake/echo", stream=True, messages=[{"role": "user", "content": "a b"}])
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    script(fake_provider, {"cut": True})
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}) as r:
        events = list(sse_events(r))
    assert events[-1] == "[DONE]" and "error" in events[-2], events


def test_client_errors_are_not_retried(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    r = ask(gateway, model="fake/reject")
    assert r.status_code == 400
    assert attempts_since(fake_provider, before) == 1


def test_stream_dropped_before_its_first_event_is_retried(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"drop": True})
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}) as r:
        assert r.status_code == 200
        chunks = parse_chunks(sse_events(r))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "echo: a b"
    assert attempts_since(fake_provider, before) == 2


def test_streams_always_ask_upstream_for_usage_but_pass_it_on_only_when_asked(gateway, fake_provider):
    before = len(fake_requests(fake_provider))
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "a"}]}) as r:
        chunks = parse_chunks(sse_events(r))
    sent = fake_requests(fake_provider)[before:]
    assert sent[0]["stream_options"]["include_usage"] is True
    assert all(not c.get("usage") for c in chunks)


@pytest.fixture(scope="module")
def azure(tmp_path_factory, fake_provider):
    section = fake_provider_section(
        fake_provider, key_env="AZURE_TEST_KEY", name="azure", kind="azure", base_path="",
        extra_keys='api_version = "2024-10-21"\n',
    ).replace('{ name = "echo",', '{ name = "gpt-4o", deployment = "echo",')
    gw = Gateway(tmp_path_factory.mktemp("azure"), gateway_config(section),
                 '[[rule]]\nname = "default"\nroute = "local"\n', env={"AZURE_TEST_KEY": "az-secret-value"})
    yield gw
    gw.stop()


def test_a_key_echoed_anywhere_in_an_error_is_taken_out(azure, fake_provider):
    echoed = {"error": {"message": "bad key az-secret-value", "type": "invalid_request_error az-secret-value",
                        "param": "az-secret-value", "code": "az-secret-value"}}
    script(fake_provider, {"status": 400, "body": echoed})
    r = httpx.post(f"{azure.v1}/chat/completions", timeout=30, json={"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "az-secret-value" not in r.text
    assert r.json()["error"]["type"] == "invalid_request_error [redacted]"


def test_azure_uses_deployment_url_api_version_and_api_key_header(azure, fake_provider):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{azure.v1}/chat/completions", timeout=30,
                   json={"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
    record = httpx.get(f"{fake_provider}/control/requests").json()[before]
    assert record["path"] == "/openai/deployments/echo/chat/completions"
    assert record["api_key"] == "az-secret-value" and record["authorization"] is None
    assert not any("az-secret-value" in line for line in azure.process.lines)


def test_an_azure_429_reaches_the_client_in_openai_terms(azure, fake_provider):
    # Azure's 429 body has no type and a numeric code; three of them outlast the two retries.
    throttled = {"status": 429, "retry_after": "0", "body": {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded call rate limit."}}}
    script(fake_provider, throttled, throttled, throttled)
    r = httpx.post(f"{azure.v1}/chat/completions", timeout=30, json={"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded") and "call rate limit" in error["message"], error


def test_an_azure_content_filter_refusal_keeps_its_innererror(azure, fake_provider):
    # Azure's refusal names the category and severity only in `innererror`; clients read it there.
    inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        "hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": True, "severity": "medium"}}}
    refused = {"status": 400, "body": {"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400, "innererror": inner}}}
    script(fake_provider, refused)
    r = httpx.post(f"{azure.v1}/chat/completions", timeout=30, json={"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("content_filter", "prompt") and "content management policy" in error["message"], error
    assert error["innererror"] == inner, error
    # Errors without one carry no innererror key at all.
    script(fake_provider, {"status": 400, "body": {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}})
    r = httpx.post(f"{azure.v1}/chat/completions", timeout=30, json={"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "innererror" not in r.json()["error"], r.text


def test_azure_api_versions_before_2024_09_01_are_not_sent_stream_options(tmp_path, fake_provider):
    section = fake_provider_section(fake_provider, key_env="AZURE_TEST_KEY", name="azure", kind="azure", base_path="",
                                    extra_keys='api_version = "2024-06-01"\n').replace('{ name = "echo",', '{ name = "gpt-4o", deployment = "echo",')
    gw = Gateway(tmp_path, f'[server]\nregion = "eu-west"\n\n{section}\n[policy]\nfile = "{{policy}}"\n',
                 '[[rule]]\nname = "all"\nroute = "azure/gpt-4o"\n', env={"AZURE_TEST_KEY": "az-secret-value"})
    try:
        before = len(fake_requests(fake_provider))
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=30, json={
                "model": "azure/gpt-4o", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "a b"}]}) as r:
            chunks = parse_chunks(sse_events(r))
        sent = fake_requests(fake_provider)[before]
        assert "stream_options" not in sent, "that version refuses the field"
        # The usage the client asked for is still there, estimated.
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0, chunks[-1]
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def breaker(tmp_path_factory, fake_provider):
    section = fake_provider_section(fake_provider, name="flaky", extra_keys="max_retries = 0\ncircuit_failures = 2\ncircuit_open_ms = 600000\n")
    policy = '[[rule]]\nname = "default"\nroute = "flaky/echo"\nfallback = ["local"]\n'
    gw = Gateway(tmp_path_factory.mktemp("breaker"), gateway_config(section), policy)
    yield gw
    gw.stop()


def test_open_circuit_is_skipped_before_dispatch(breaker, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"status": 500}, {"status": 500})
    for _ in range(2):
        r = ask(breaker, model="auto", max_tokens=2)
        assert r.status_code == 200 and r.headers["x-switchyard-target"] == "local/local-small", "fell back"
    assert attempts_since(fake_provider, before) == 2
    d = httpx.post(f"{breaker.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": "ping"}]}).json()
    assert d["target"] == "local/local-small"
    assert any("circuit open" in reason for reason in d["reasons"]), d["reasons"]
    r = ask(breaker, model="auto", max_tokens=2)
    assert r.status_code == 200 and r.headers["x-switchyard-target"] == "local/local-small"
    assert attempts_since(fake_provider, before) == 2, "the open provider was not called"


def test_a_provider_refusing_the_gateways_key_is_a_502_that_quotes_no_key(tmp_path, fake_provider):
    # Its own gateway: these failures must not count against the shared one's circuit.
    gw = Gateway(tmp_path, remote_only_config(fake_provider), policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        for status in (401, 403):
            script(fake_provider, {"status": status, "message": "Incorrect API key provided: sk-fake-************cdef."})
            r = ask(gw)
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert (err["type"], err["code"]) == ("api_error", "upstream_error")
            assert "credentials" in err["message"] and "cdef" not in r.text and "Incorrect API key" not in r.text
        assert not any("cdef" in line for line in gw.process.lines)
    finally:
        gw.stop()


def test_an_open_circuit_with_no_fallback_is_503_upstream_unavailable(tmp_path, fake_provider):
    section = fake_provider_section(fake_provider, name="brittle", extra_keys="max_retries = 0\ncircuit_failures = 1\ncircuit_open_ms = 600000\n")
    gw = Gateway(tmp_path, gateway_config(section), '[[rule]]\nname = "default"\nroute = "local"\n')
    try:
        before = len(fake_requests(fake_provider))
        script(fake_provider, {"status": 500})
        assert ask(gw, model="brittle/echo").status_code == 502  # the one failure that opens it
        r = ask(gw, model="brittle/echo")
        assert attempts_since(fake_provider, before) == 1, "the open provider was not called"
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("api_error", "upstream_unavailable")
        assert "brittle" in err["message"] and "circuit open" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 600
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def second_fake():
    p = Process([str(FAKE_BIN)], marker="listening on ", timeout=10)
    yield f"http://{p.value}"
    p.stop()


def test_pool_spreads_load_and_ejects_a_dead_endpoint(tmp_path, fake_provider, second_fake):
    dead = "http://127.0.0.1:9/v1"  # discard port: connection refused
    section = fake_provider_section(fake_provider, name="pool", extra_keys=(
        f'endpoints = ["{fake_provider}/v1", "{second_fake}/v1", "{dead}"]\nmax_retries = 3\n'))
    gw = Gateway(tmp_path, gateway_config(section), '[[rule]]\nname = "default"\nroute = "local"\n')
    try:
        before_a, before_b = len(fake_requests(fake_provider)), len(fake_requests(second_fake))
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as workers:
            statuses = list(workers.map(lambda _: ask(gw, model="pool/echo").status_code, range(48)))
        assert statuses == [200] * 48
        got_a, got_b = attempts_since(fake_provider, before_a), attempts_since(second_fake, before_b)
        assert got_a + got_b == 48 and got_a > 0 and got_b > 0, (got_a, got_b)

        # A failed endpoint is passed over for a second, then tried again: with traffic going on,
        # its third failure in a row ejects it — and no request fails meanwhile.
        def ejected():
            assert ask(gw, model="pool/echo").status_code == 200
            return any("endpoint ejected" in line and "127.0.0.1:9" in line for line in gw.process.lines)
        wait_for(ejected, timeout=20, what="the dead endpoint's ejection")
    finally:
        gw.stop()


@pytest.fixture
def black_hole():
    """A port whose listener never accepts and whose queue is full: a connect to it hangs, as one
    to a host that drops packets (a replica gone from behind its address) does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    filler.close()
    listener.close()


def test_a_connect_that_hangs_is_a_connect_error_within_seconds_and_retried(tmp_path, fake_provider, black_hole):
    hole = fake_provider_section(black_hole, name="hole", base_path="", extra_keys="max_retries = 1\n")
    gw = Gateway(tmp_path, gateway_config(hole), '[[rule]]\nname = "default"\nroute = "local"\n')
    try:
        # timeout_ms is 20 s: each attempt's connect gives up after 5 s, and a connect error, unlike
        # a timeout of the request, is retried (in a pool, on another endpoint). The client would
        # give up at 25 s.
        r = httpx.post(f"{gw.v1}/chat/completions", timeout=25, json={"model": "hole/echo", "messages": [{"role": "user", "content": "ping"}]})
        assert r.status_code == 502 and r.json()["error"]["code"] != "upstream_timeout", r.text
        assert any("retrying upstream" in line and "hole" in line for line in gw.process.lines), gw.process.lines[-5:]
    finally:
        gw.stop()


def test_malformed_event_mid_stream_ends_with_an_error_event_and_done(gateway, fake_provider):
    script(fake_provider, {"malformed": True})
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert '"fine"' in events[0]
    assert '"error"' in events[-2] and "upstream_error" in events[-2]


@pytest.fixture(scope="module")
def impatient(tmp_path_factory, fake_provider):
    section = fake_provider_section(fake_provider, name="slowpoke").replace("timeout_ms = 20000", "timeout_ms = 300")
    gw = Gateway(tmp_path_factory.mktemp("impatient"), gateway_config(section), '[[rule]]\nname = "default"\nroute = "local"\n')
    yield gw
    gw.stop()


def test_slow_first_byte_times_out_as_504_without_retry(impatient, fake_provider):
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"slow_ms": 1500})
    r = ask(impatient, model="slowpoke/echo")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert attempts_since(fake_provider, before) == 1
    # The provider had the prompt: it is billed on its estimate, as when the client leaves.
    record = accounting_record(impatient, r.headers["x-request-id"])
    assert (record["status"], record["target"], record["cost_estimated"]) == ("504", "slowpoke/echo", "true"), record
    assert int(record["prompt_tokens"]) > 0 and float(record["cost_usd"]) > 0, record


def test_an_error_body_that_stalls_is_given_up_on_and_retried(impatient, fake_provider):
    # A proxy sends 503 and the start of its body, then nothing: the body is read within
    # `timeout_ms` like the rest of the answer, so the retry serves the request instead of the
    # request hanging for as long as the connection stays open.
    before = len(fake_requests(fake_provider))
    script(fake_provider, {"status": 503, "stall_body": True})
    r = ask(impatient, model="slowpoke/echo")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: ping", r.text
    assert attempts_since(fake_provider, before) == 2


def test_stalled_stream_ends_with_a_timeout_error_event(impatient, fake_provider):
    with httpx.stream("POST", f"{impatient.v1}/chat/completions", timeout=30,
                      json={"model": "slowpoke/gated", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    httpx.post(f"{fake_provider}/control/release")
    assert events[-1] == "[DONE]"
    assert any('"first"' in e for e in events), "events before the stall arrive"
    error = json.loads(events[-2])["error"]
    # A stall is a timeout, as a slow first byte is (it read as a generic upstream error).
    assert error["code"] == "upstream_timeout" and "300 ms" in error["message"], error
    samples = metric_samples(httpx.get(f"{impatient.base}/metrics").text)
    assert sample(samples, "switchyard_upstream_errors_total", provider="slowpoke", kind="timeout"), "counted as a timeout"


def test_a_provider_echoing_its_key_in_errors_never_shows_it(tmp_path, fake_provider):
    secret = "sk-echoed-secret-0123456789"
    config = f'[server]\nregion = "eu-west"\n\n{fake_provider_section(fake_provider, key_env="ECHO_TEST_KEY")}\n[policy]\nfile = "{{policy}}"\n'
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n', env={"ECHO_TEST_KEY": secret})
    try:
        # A 4xx passed on as the provider's own error body.
        script(fake_provider, {"status": 400, "message": f"key {secret} is not allowed here"})
        rejected = ask(gw)
        assert rejected.status_code == 400 and "[redacted]" in rejected.text and secret not in rejected.text
        # A 5xx after its retries, non-streamed and streamed.
        script(fake_provider, *[{"status": 500, "message": f"boom for {secret}"}] * 3)
        failed = ask(gw)
        assert failed.status_code == 502 and secret not in failed.text
        script(fake_provider, *[{"status": 500, "message": f"boom for {secret}"}] * 3)
        streamed = ask(gw, stream=True)
        assert streamed.status_code == 502 and secret not in streamed.text
        # Nor in the log, where the retries were reported.
        assert any("retrying upstream" in line for line in gw.process.lines)
        assert not any(secret in line for line in gw.process.lines)
    finally:
        gw.stop()


def test_an_unreachable_provider_is_named_without_its_url(tmp_path, fake_provider):
    # https:// to the fake's plain-HTTP port: the TLS handshake fails. The client learns which
    # provider failed and how, not where the provider lives.
    tls_to_plain = fake_provider.replace("http://", "https://")
    config = remote_only_config(fake_provider).replace(f'base_url = "{fake_provider}/v1"', f'base_url = "{tls_to_plain}/v1"')
    assert tls_to_plain in config
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        r = ask(gw)
        assert r.status_code == 502, r.text
        message = r.json()["error"]["message"]
        assert "fake" in message and "error sending request" in message, message
        host = fake_provider.removeprefix("http://")
        assert host not in r.text and "/chat/completions" not in r.text, r.text
    finally:
        gw.stop()


def test_a_provider_quoting_the_prompt_in_its_error_leaves_no_pii_in_the_log(tmp_path, fake_provider):
    # A 5xx whose message quotes the prompt's email: the client's 502 may say it (its own text),
    # the log says `<EMAIL_1>` — at each retry, at the fallback and at the failure.
    gw = Gateway(tmp_path, remote_only_config(fake_provider), policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        script(fake_provider, *[{"status": 503, "message": "cannot serve jane.doe@example.com right now"}] * 3)
        assert ask(gw).status_code == 502
        # The failure's log line may follow the answer by a moment.
        wait_for(lambda: any("<EMAIL_1>" in line for line in gw.process.lines if "cannot serve" in line or "retrying upstream" in line),
                 what="the failure logged with a placeholder")
        assert not any("jane.doe@example.com" in line for line in gw.process.lines)
    finally:
        gw.stop()
