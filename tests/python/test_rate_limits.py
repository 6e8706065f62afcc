"""Per-tenant rate limits (in-process store): requests and tokens per minute, `x-ratelimit-*`
headers on every answer to a tenant with limits (429s too), 429 `rate_limit_exceeded` with
`Retry-After` when over, tenants independent."""

import httpx
import pytest

from conftest import Gateway, fake_provider_section, gateway_config
from test_privacy_routing import new_key


@pytest.fixture(scope="module")
def limited(tmp_path_factory, fake_provider):
    rpm_key, rpm_hash = new_key("two-per-minute")
    tpm_key, tpm_hash = new_key("fifty-tokens")
    free_key, free_hash = new_key("unlimited")
    early_key, early_hash = new_key("refused-early")
    extra = (
        fake_provider_section(fake_provider)
        + f'[[tenants]]\nname = "two-per-minute"\nkeys = ["{rpm_hash}"]\nrate_limit = {{ rpm = 2 }}\n'
        + f'[[tenants]]\nname = "fifty-tokens"\nkeys = ["{tpm_hash}"]\nrate_limit = {{ tpm = 50 }}\n'
        + f'[[tenants]]\nname = "unlimited"\nkeys = ["{free_hash}"]\n'
        + f'[[tenants]]\nname = "refused-early"\nkeys = ["{early_hash}"]\nrate_limit = {{ rpm = 7, tpm = 1000 }}\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("limits"), gateway_config(extra), '[[rule]]\nname = "default"\nroute = "local"\n')
    gw.keys = {"rpm": rpm_key, "tpm": tpm_key, "free": free_key, "early": early_key}
    yield gw
    gw.stop()


def ask(gw, key, content="ping"):
    return httpx.post(f"{gw.v1}/chat/completions", timeout=30, headers={"authorization": f"Bearer {key}"},
                      json={"model": "fake/echo", "messages": [{"role": "user", "content": content}]})


def test_requests_per_minute_with_headers_then_429(limited):
    first, second, third = (ask(limited, limited.keys["rpm"]) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert (first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 30, "half a minute refills one of two requests"


def test_tokens_per_minute_refuse_a_prompt_that_does_not_fit(limited):
    ok = ask(limited, limited.keys["tpm"], "short")
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-tokens"] == "50"
    remaining = int(ok.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 50
    # Within the allowance but not within what is left: retry when it has refilled enough.
    later = ask(limited, limited.keys["tpm"], "x" * (4 * (remaining + 1)))
    assert later.status_code == 429 and "tokens" in later.json()["error"]["message"]
    assert "retry-after" in later.headers and later.headers["x-ratelimit-limit-tokens"] == "50"
    # More than the whole allowance: no wait would do, so no Retry-After (OpenAI's "Request too large").
    big = ask(limited, limited.keys["tpm"], "x" * 400)  # 100 tokens
    assert big.status_code == 429 and big.json()["error"]["code"] == "rate_limit_exceeded"
    assert "limit 50, requested 100" in big.json()["error"]["message"]
    assert "retry-after" not in big.headers and big.headers["x-ratelimit-limit-tokens"] == "50"


def test_tenants_without_limits_get_no_headers_and_are_not_limited(limited):
    for _ in range(4):
        r = ask(limited, limited.keys["free"])
        assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers


UNKNOWN_MODEL = {
    "chat/completions": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    "completions": {"model": "no-such-model", "prompt": "x"},
    "responses": {"model": "no-such-model", "input": "x"},
    "embeddings": {"model": "no-such-model", "input": "x"},
}


@pytest.mark.parametrize("path", UNKNOWN_MODEL)
def test_answers_refused_before_admission_carry_the_headers_and_take_nothing(limited, path):
    # An unreadable body, an unknown model, a body over `max_body_bytes`: refused before the
    # limits are asked, on every endpoint, yet "every answer to a tenant with limits" has them.
    key = {"authorization": f"Bearer {limited.keys['early']}"}
    refusals = [
        (400, {"content": b"{not json", "headers": {**key, "content-type": "application/json"}}),
        (404, {"json": UNKNOWN_MODEL[path], "headers": key}),
        (413, {"content": b"x" * (4 * 1024 * 1024 + 1), "headers": {**key, "content-type": "application/json"}}),
    ]
    for status, request in refusals:
        r = httpx.post(f"{limited.v1}/{path}", timeout=30, **request)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
        assert r.headers["x-ratelimit-limit-requests"] == "7", (status, dict(r.headers))
        assert r.headers["x-ratelimit-remaining-requests"] == "7", "a refusal takes nothing"
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert r.headers["x-ratelimit-remaining-tokens"] == "1000"


def test_a_refusal_before_admission_carries_the_headers_and_takes_nothing(tmp_path, fake_provider):
    # The in-flight limit refuses before the rate limits are asked: the 429 still tells the
    # tenant where it stands, and takes no request from the allowance.
    key, key_hash = new_key("one-at-a-time")
    extra = fake_provider_section(fake_provider) + f'[[tenants]]\nname = "one-at-a-time"\nkeys = ["{key_hash}"]\nrate_limit = {{ rpm = 5 }}\n'
    config = gateway_config(extra).replace('[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nmax_in_flight_per_tenant = 1')
    gw = Gateway(tmp_path, config, '[[rule]]\nname = "default"\nroute = "local"\n')
    try:
        body = {"model": "fake/gated", "stream": True, "messages": [{"role": "user", "content": "hold"}]}
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"}) as held:
            lines = held.iter_lines()  # kept: a dropped generator would close the stream
            next(lines)
            refused = ask(gw, key)
            assert refused.status_code == 429 and "in flight" in refused.json()["error"]["message"], refused.text
            assert refused.headers["x-ratelimit-limit-requests"] == "5"
            assert refused.headers["x-ratelimit-remaining-requests"] == "4", "only the held stream took one"
            httpx.post(f"{fake_provider}/control/release")
        assert ask(gw, key).headers["x-ratelimit-remaining-requests"] == "3"
    finally:
        gw.stop()
