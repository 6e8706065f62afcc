"""Circuit breakers are per provider and model: one failing model does not close the provider's
others; and a half-open probe whose client leaves does not hold the circuit half-open for good
(it used to: every later call got 503 `upstream_unavailable` until a restart); a stream answered
200 whose first event is an error, or that breaks off after it started, counts as a failure."""

import httpx

from conftest import Gateway, fake_requests, remote_only_config, wait_for


def brittle(tmp_path, fake_provider, open_ms):
    config = remote_only_config(fake_provider).replace("retry_base_ms = 5", f"max_retries = 0\ncircuit_failures = 1\ncircuit_open_ms = {open_ms}\nretry_base_ms = 5")
    return Gateway(tmp_path, config, policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')


def ask(gw, model, timeout=30):
    return httpx.post(f"{gw.v1}/chat/completions", timeout=timeout, json={"model": model, "messages": [{"role": "user", "content": "ping"}]})


def script(fake_provider, *faults):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": list(faults)}).raise_for_status()


def circuit_open(gw):
    return 'switchyard_circuit_open{provider="fake"} 1' in httpx.get(f"{gw.base}/metrics").text


def test_one_failing_model_does_not_close_the_providers_others(tmp_path, fake_provider):
    gw = brittle(tmp_path, fake_provider, 600000)
    try:
        script(fake_provider, {"status": 500})
        assert ask(gw, "fake/echo").status_code == 502, "the failure that opens echo's circuit"
        closed = ask(gw, "fake/echo")
        assert closed.status_code == 503 and closed.json()["error"]["code"] == "upstream_unavailable", closed.text
        assert "fake/echo" in closed.json()["error"]["message"]
        other = ask(gw, "fake/shred")
        assert other.status_code == 200, f"another model of the same provider still answers: {other.text}"
        assert circuit_open(gw)
    finally:
        gw.stop()


def test_a_probe_whose_client_leaves_lets_the_next_call_probe(tmp_path, fake_provider):
    gw = brittle(tmp_path, fake_provider, 1500)
    try:
        script(fake_provider, {"status": 500})
        assert ask(gw, "fake/echo").status_code == 502
        assert circuit_open(gw)
        wait_for(lambda: not circuit_open(gw), what="the circuit's open time to pass")
        # The probe: the fake holds it 20 s, its client gives up after 1 s.
        before = len(fake_requests(fake_provider))
        script(fake_provider, {"slow_ms": 20000})
        try:
            ask(gw, "fake/echo", timeout=1.0)
            raise AssertionError("the fake should have held the probe")
        except httpx.TimeoutException:
            pass
        assert len(fake_requests(fake_provider)) == before + 1, "the probe reached the provider"
        # The next call probes and, answered, closes the circuit.
        answered = wait_for(lambda: ask(gw, "fake/echo").status_code == 200, what="a call to get through after the abandoned probe")
        assert answered
    finally:
        gw.stop()


def test_a_stream_whose_first_event_is_an_error_counts_against_the_model(tmp_path, fake_provider):
    # A server that opens every stream with 200 and then sends only an error is failing: its
    # circuit opens as if it had answered 500 (it used to count as answered, and stay closed).
    gw = brittle(tmp_path, fake_provider, 600000)
    try:
        script(fake_provider, {"error_event": "CUDA out of memory"})
        r = httpx.post(f"{gw.v1}/chat/completions", timeout=30, json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "ping"}]})
        assert r.status_code == 502 and "CUDA out of memory" in r.json()["error"]["message"], r.text
        assert circuit_open(gw)
        closed = ask(gw, "fake/echo")
        assert closed.status_code == 503 and closed.json()["error"]["code"] == "upstream_unavailable", closed.text
    finally:
        gw.stop()


def test_a_stream_that_breaks_off_after_its_start_counts_against_the_model(tmp_path, fake_provider):
    # The fake's `malformed` stream sends one good chunk, then one that is not JSON: the client
    # gets the start and an error event; the model's circuit counts the failure (it counted the
    # stream as answered when it opened, and nothing after).
    gw = brittle(tmp_path, fake_provider, 600000)
    try:
        script(fake_provider, {"malformed": True})
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=30, json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "ping"}]}) as r:
            assert r.status_code == 200
            body = r.read().decode()
        assert '"fine"' in body and "upstream_error" in body, body
        assert circuit_open(gw)
        assert ask(gw, "fake/echo").status_code == 503
    finally:
        gw.stop()
