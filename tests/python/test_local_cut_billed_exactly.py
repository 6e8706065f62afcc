"""A client that leaves a local stream mid-answer is billed the prompt's exact tokens (the engine
counts them once it takes the prompt), not an estimate from the characters it sent: the chat
template's tokens are not in those (9 estimated against 30-odd counted)."""

import httpx
import pytest

from conftest import ALL_LOCAL, Gateway, accounting_record, gateway_config

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("local-cut"), gateway_config(), ALL_LOCAL)
    yield gw
    gw.stop()


def test_a_client_leaving_a_local_stream_is_billed_the_counted_prompt(gateway):
    whole = httpx.post(f"{gateway.v1}/chat/completions", timeout=120, json={"model": "auto", "messages": MESSAGES, "max_tokens": 1}).json()
    counted = whole["usage"]["prompt_tokens"]
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", timeout=120,
                      json={"model": "auto", "messages": MESSAGES, "max_tokens": 64, "stream": True}) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        texts = 0
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                texts += 1
                if texts == 3:
                    break
    record = accounting_record(gateway, request_id)
    assert int(record["prompt_tokens"]) == counted, (record, counted)
    assert int(record["completion_tokens"]) >= 1, record
