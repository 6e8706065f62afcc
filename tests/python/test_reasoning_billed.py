"""A reasoning model's thinking is output it is billed for: when a self-hosted server (vLLM,
llama-server) reports no usage, the estimate counts `reasoning_content` as well as the answer.
It counted the answer only (4 characters of 404 here), so a reasoning stream cost next to nothing."""

import httpx
import pytest

from conftest import Gateway, accounting_record, remote_only_config

# 400 characters of reasoning and the answer "done", at four characters a token, rounded up.
ESTIMATED_COMPLETION = (400 + 4 + 3) // 4


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    gw = Gateway(tmp_path_factory.mktemp("reasoning"), remote_only_config(fake_provider), policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    yield gw
    gw.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_counts_in_the_estimated_completion(gateway, stream):
    body = {"model": "fake/reasoner", "messages": [{"role": "user", "content": "think"}], "stream": stream}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
        request_id = r.headers["x-request-id"]
    assert "done" in text and "step by step" in text, "the reasoning reaches the client as sent"
    record = accounting_record(gateway, request_id)
    assert record["cost_estimated"] == "true", record
    assert int(record["completion_tokens"]) == ESTIMATED_COMPLETION, record
