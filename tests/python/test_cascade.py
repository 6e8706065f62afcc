"""`strategy = "cascade"`: the local engine answers a non-streamed request first; its answer is
kept when the mean log-probability of its tokens reaches `[classifier] cascade_min_logprob`,
otherwise the request goes on to the rule's route (a recording fake provider). Streamed requests
go straight to the route."""

import httpx
import pytest

from conftest import Gateway, fake_provider_section, fake_requests, gateway_config


def cascade_gateway(tmp, fake_provider, threshold):
    policy = (f"[classifier]\ncascade_min_logprob = {threshold}\n\n"
              '[[rule]]\nname = "cascade"\nroute = "fake/echo"\nstrategy = "cascade"\n')
    return Gateway(tmp, gateway_config(fake_provider_section(fake_provider)), policy)


def ask(gw, text, stream=False):
    body = {"model": "auto", "temperature": 0, "max_tokens": 12, "stream": stream,
            "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def keeping(tmp_path_factory, fake_provider):
    gw = cascade_gateway(tmp_path_factory.mktemp("keep"), fake_provider, -1000.0)
    yield gw
    gw.stop()


def test_confident_enough_local_answers_are_kept(keeping, fake_provider):
    before = len(fake_requests(fake_provider))
    r = ask(keeping, "What is 2 + 2? cascade-kept")
    assert r.headers["x-switchyard-tier"] == "local" and r.headers["x-switchyard-target"] == "local/local-small"
    assert r.headers["x-switchyard-cascade"] == "kept"
    confidence = float(r.headers["x-switchyard-local-confidence"])
    assert -1000.0 <= confidence <= 0.0
    # The least likely token's log-probability bounds the mean from below.
    assert float(r.headers["x-switchyard-local-min-logprob"]) <= confidence
    assert not r.json()["choices"][0]["message"]["content"].startswith("echo:")
    assert "cascade-kept" not in str(fake_requests(fake_provider)[before:])
    route = httpx.post(f"{keeping.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert route["target"] == "fake/echo" and any("cascade" in reason for reason in route["reasons"]), route


def test_streams_go_straight_to_the_route(keeping):
    r = ask(keeping, "What is 3 + 3?", stream=True)
    assert r.headers["x-switchyard-tier"] == "remote"
    assert "x-switchyard-cascade" not in r.headers


def test_unsure_local_answers_escalate(tmp_path, fake_provider):
    # A mean log-probability reaches 0 only if every token was certain: the local answer escalates.
    gw = cascade_gateway(tmp_path, fake_provider, 0.0)
    try:
        before = len(fake_requests(fake_provider))
        r = ask(gw, "What is 2 + 2? cascade-escalated")
        assert r.headers["x-switchyard-tier"] == "remote" and r.headers["x-switchyard-target"] == "fake/echo"
        assert r.headers["x-switchyard-cascade"] == "escalated"
        assert float(r.headers["x-switchyard-local-confidence"]) <= 0.0
        assert float(r.headers["x-switchyard-local-min-logprob"]) <= float(r.headers["x-switchyard-local-confidence"])
        assert r.json()["choices"][0]["message"]["content"] == "echo: What is 2 + 2? cascade-escalated"
        sent = fake_requests(fake_provider)[before:]
        assert len(sent) == 1 and "cascade-escalated" in str(sent[0])
    finally:
        gw.stop()


def finished(gw):
    """Sequences the local engine has finished generating."""
    return httpx.get(f"{gw.base}/readyz").json()["engine"]["finished_total"]


def test_an_escalation_that_falls_back_to_local_serves_the_answer_already_given(tmp_path, fake_provider):
    # The route always fails; the chain falls back to the local engine, whose low-confidence answer
    # is already in hand: it is served, not generated a second time.
    policy = ("[classifier]\ncascade_min_logprob = 0.0\n\n"
              '[[rule]]\nname = "cascade"\nroute = "fake/fail"\nfallback = ["local"]\nstrategy = "cascade"\n')
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider)), policy)
    try:
        before = finished(gw)
        r = ask(gw, "What is 2 + 2? cascade-fallback")
        assert r.headers["x-switchyard-target"] == "local/local-small" and r.headers["x-switchyard-cascade"] == "escalated"
        assert float(r.headers["x-switchyard-local-min-logprob"]) <= float(r.headers["x-switchyard-local-confidence"]) <= 0.0
        assert not r.json()["choices"][0]["message"]["content"].startswith("echo:")
        assert finished(gw) == before + 1
    finally:
        gw.stop()


def test_a_kept_answer_is_served_from_the_response_cache(tmp_path, fake_provider):
    policy = ("[classifier]\ncascade_min_logprob = -1000.0\n\n"
              '[[rule]]\nname = "cascade"\nroute = "fake/echo"\nstrategy = "cascade"\n')
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider) + "\n[cache]\nttl_s = 300\n"), policy)
    try:
        first = ask(gw, "What is 5 + 5? cascade-cached")
        assert first.headers["x-switchyard-cascade"] == "kept" and first.headers["x-switchyard-cache"] == "miss"
        generated = finished(gw)
        again = ask(gw, "What is 5 + 5? cascade-cached")
        assert again.headers["x-switchyard-cache"] == "hit", again.headers
        assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        assert finished(gw) == generated
        # A stream skips the cascade: the route answers it, not the kept local answer.
        streamed = ask(gw, "What is 5 + 5? cascade-cached", stream=True)
        assert streamed.headers["x-switchyard-tier"] == "remote" and "echo:" in streamed.text
    finally:
        gw.stop()


def test_a_local_answer_another_rule_cached_is_not_replayed_under_a_cascade(tmp_path, fake_provider):
    # Cached while a plain rule sent everything local; after the policy becomes a cascade that
    # escalates everything, the same request must not get that answer, which no confidence check passed.
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider) + "\n[cache]\nttl_s = 300\n"),
                 '[[rule]]\nname = "home"\nroute = "local"\n')
    try:
        first = ask(gw, "What is 7 + 7? cascade-other-rule")
        assert first.headers["x-switchyard-tier"] == "local" and first.headers["x-switchyard-cache"] == "miss"
        assert ask(gw, "What is 7 + 7? cascade-other-rule").headers["x-switchyard-cache"] == "hit"
        (tmp_path / "policy.toml").write_text("[classifier]\ncascade_min_logprob = 0.0\n\n"
                                              '[[rule]]\nname = "cascade"\nroute = "fake/echo"\nstrategy = "cascade"\n')
        assert httpx.post(f"{gw.base}/admin/reload", timeout=30).status_code == 200
        again = ask(gw, "What is 7 + 7? cascade-other-rule")
        assert again.headers["x-switchyard-cascade"] == "escalated" and again.headers["x-switchyard-cache"] == "miss", again.headers
        assert again.json()["choices"][0]["message"]["content"] == "echo: What is 7 + 7? cascade-other-rule"
    finally:
        gw.stop()
