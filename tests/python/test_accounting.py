"""One accounting record per finished request: exact cost from reported usage (cached prompt
tokens at their own price), streams accounted exactly even when the client did not ask for usage,
a client that leaves mid-stream still leaves a record (estimated, and marked so), one that leaves
before any answer is a 499 against the target that had its prompt, and failed requests are
recorded with their status."""

import json
import socket

import httpx

from conftest import accounting_record, accounting_records, fake_requests, wait_for


def test_cached_prompt_tokens_are_priced_at_the_cached_price(gateway):
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                   json={"model": "fake/cached", "messages": [{"role": "user", "content": "a b"}]})
    assert r.status_code == 200
    # 3 uncached prompt tokens at $1/Mtok, 8 cached at $0.5/Mtok, 3 completion tokens at $2/Mtok.
    expected = (3 * 1.0 + 8 * 0.5 + 3 * 2.0) / 1e6
    assert float(r.headers["x-switchyard-cost-usd"]) == expected
    rec = accounting_record(gateway, r.headers["x-request-id"])
    assert float(rec["cost_usd"]) == expected and rec["cost_estimated"] == "false"
    assert rec["status"] == "200" and rec["target"] == "fake/cached" and rec["tier"] == "remote"


def test_an_answer_without_usage_is_billed_on_estimates_its_header_agrees(gateway):
    # A self-hosted server may report no usage: prompt and answer are estimated (4 characters a
    # token), the record says so, and the cost header shows the same figure.
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                   json={"model": "fake/bare", "messages": [{"role": "user", "content": "one two three four"}]})
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    rec = accounting_record(gateway, r.headers["x-request-id"])
    completion = -(-len(answer) // 4)
    assert rec["cost_estimated"] == "true" and int(rec["completion_tokens"]) == completion, (rec, answer)
    assert int(rec["prompt_tokens"]) == -(-len("one two three four") // 4)
    assert float(r.headers["x-switchyard-cost-usd"]) == float(rec["cost_usd"]) > 0
    # The answer shows the usage it is billed for, as OpenAI's always has one.
    usage = r.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (int(rec["prompt_tokens"]), completion), usage


def test_tool_calls_count_as_output_when_usage_is_estimated(gateway):
    # A provider that reports no usage answers with a tool call: the call's name and arguments
    # are what the model wrote, and are billed (they were 0 completion tokens).
    text = "one two three four five six"
    body = {"model": "fake/tool-bare", "messages": [{"role": "user", "content": text}],
            "tools": [{"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}]}
    written = len("send") + len(json.dumps({"text": text}, separators=(",", ":")))
    r = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
    rec = accounting_record(gateway, r.headers["x-request-id"])
    assert int(rec["completion_tokens"]) == -(-written // 4) == r.json()["usage"]["completion_tokens"], (rec, r.json())
    # The tool definitions were prompt too (a provider bills them).
    read = len(text) + len(json.dumps(body["tools"], separators=(",", ":")))
    assert int(rec["prompt_tokens"]) == -(-read // 4) == r.json()["usage"]["prompt_tokens"], (rec, read)
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as s:
        request_id = s.headers["x-request-id"]
        events = [line[len("data: "):] for line in s.iter_lines() if line.startswith("data: ")]
    rec = accounting_record(gateway, request_id)
    assert int(rec["completion_tokens"]) == -(-written // 4) == json.loads(events[-2])["usage"]["completion_tokens"], (rec, events[-2])


def test_stream_is_accounted_from_upstream_usage_the_client_did_not_ask_for(gateway):
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "a"}]}) as r:
        request_id = r.headers["x-request-id"]
        body = r.read().decode()
    assert '"usage"' not in body
    rec = accounting_record(gateway, request_id)
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cost_estimated"]) == ("11", "3", "false")
    assert float(rec["cost_usd"]) == (11 * 1.0 + 3 * 2.0) / 1e6
    assert rec["ttft_ms"] != "None"


def test_a_stream_without_provider_usage_still_shows_the_billed_usage(gateway):
    # A self-hosted server may send no usage chunk even when asked: a client that asked for usage
    # still gets one, with the figures its record is billed for (estimated, and marked so).
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/bare", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "one two three four"}]}) as r:
        request_id = r.headers["x-request-id"]
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and all(c["usage"] is None for c in chunks[:-1]), chunks
    rec = accounting_record(gateway, request_id)
    assert rec["cost_estimated"] == "true"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (int(rec["prompt_tokens"]), int(rec["completion_tokens"]))
    answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert usage["completion_tokens"] == -(-len(answer) // 4) and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_stream_cut_by_the_provider_shows_its_billed_usage_before_the_error(gateway, fake_provider):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"cut": True}]}).raise_for_status()
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/metered", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "hello there"}]}) as r:
        request_id = r.headers["x-request-id"]
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2]), events
    usage = json.loads(events[-3])["usage"]
    rec = accounting_record(gateway, request_id)
    assert rec["cost_estimated"] == "true"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (int(rec["prompt_tokens"]), int(rec["completion_tokens"])), (usage, rec)


def test_client_leaving_mid_stream_leaves_an_estimated_record(gateway, fake_provider):
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=30,
                      json={"model": "fake/gated", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if "first" in line:
                break
    # The connection is closed here, before the fake sent usage.
    rec = accounting_record(gateway, request_id)
    httpx.post(f"{fake_provider}/control/release")
    assert rec["status"] == "200" and rec["cost_estimated"] == "true"
    assert int(rec["completion_tokens"]) >= 1 and float(rec["cost_usd"]) > 0


def send_and_leave(gateway, body, started):
    """Sends a non-streamed chat request on a raw connection, waits until `started()` says a
    target is working on it, then closes the connection without reading an answer."""
    host, port = gateway.process.value.rsplit(":", 1)
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
        wait_for(started, what="a target working on the request")


def new_records(gateway, before):
    return [r for r in accounting_records(gateway)[before:] if r["status"] == "499"]


def test_a_client_leaving_before_the_answer_is_a_499_against_its_target(gateway, fake_provider):
    # Remote: the fake holds its answer; the client leaves once the fake has the prompt.
    before, asked = len(accounting_records(gateway)), len(fake_requests(fake_provider))
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"slow_ms": 15000}]})
    prompt = "tell me everything about the sea " * 8
    send_and_leave(gateway, {"model": "fake/echo", "messages": [{"role": "user", "content": prompt}]},
                   lambda: len(fake_requests(fake_provider)) > asked)
    rec = wait_for(lambda: new_records(gateway, before), what="the 499 record")[0]
    assert (rec["target"], rec["tier"], rec["cost_estimated"]) == ("fake/echo", "remote", "true")
    assert int(rec["prompt_tokens"]) == -(-len(prompt) // 4) and float(rec["cost_usd"]) > 0
    # Local: the client leaves while the engine generates; the sequence is cancelled.
    before = len(accounting_records(gateway))
    engine = lambda: httpx.get(f"{gateway.base}/readyz").json()["engine"]
    send_and_leave(gateway, {"model": "local-small", "max_tokens": 400, "messages": [{"role": "user", "content": "Write a long story."}]},
                   lambda: engine()["active"] >= 1)
    rec = wait_for(lambda: new_records(gateway, before), what="the local 499 record")[0]
    assert (rec["target"], rec["tier"]) == ("local/local-small", "local")
    wait_for(lambda: engine()["active"] == 0 and engine()["kv_cells_used"] == 0, what="the engine idle again")


def test_a_client_leaving_mid_upload_is_a_499_not_a_client_error(gateway):
    # 26 of the 66 bytes the head announces, then the connection closes.
    before = len(accounting_records(gateway))
    host, port = gateway.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 66\r\n\r\n{\"model\": \"fake/echo\", \"me")
    rec = wait_for(lambda: new_records(gateway, before), what="the record of the abandoned upload")[0]
    assert rec["status"] == "499", rec


def test_failed_and_refused_requests_are_recorded_with_their_status(gateway):
    bad = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "auto", "messages": []})
    assert bad.status_code == 400
    assert accounting_record(gateway, bad.headers["x-request-id"])["status"] == "400"
    failed = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                        json={"model": "fake/fail", "messages": [{"role": "user", "content": "x"}]})
    assert failed.status_code == 502
    rec = accounting_record(gateway, failed.headers["x-request-id"])
    assert rec["status"] == "502" and float(rec["cost_usd"]) == 0.0
    # Counted against the provider that failed, so that its error rate shows.
    assert (rec["target"], rec["tier"]) == ("fake/fail", "remote")


def test_records_never_contain_pii_values(gateway):
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=60,
                   json={"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "mail jane@example.com"}]})
    rec = accounting_record(gateway, r.headers["x-request-id"])
    assert rec["pii_kinds"] == '["email"]'
    assert not any("jane@example.com" in line for line in gateway.process.lines)
