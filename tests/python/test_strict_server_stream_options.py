"""A self-hosted server that forbids unknown fields (TGI, a FastAPI app with `extra="forbid"`)
refuses the `stream_options` the gateway adds to every stream to learn its usage: every stream
to it failed with the server's 422. The gateway now streams again without it, once per request,
and goes without it from then on, the usage estimated."""

import openai
import pytest

from conftest import Gateway, accounting_record, fake_requests, remote_only_config, wait_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    gw = Gateway(tmp_path_factory.mktemp("strict"), remote_only_config(fake_provider), policy='[[rule]]\nname = "all"\nroute = "fake/strict"\n')
    yield gw
    gw.stop()


def sent_to_strict(fake_provider, marker):
    return [b for b in fake_requests(fake_provider) if b.get("model") == "strict" and marker in str(b.get("messages"))]


def stream(gateway, text):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return answer, chunks[-1].usage, raw.headers["x-request-id"]


def test_a_stream_to_a_strict_server_is_answered_with_its_usage_estimated(gateway, fake_provider):
    answer, usage, request_id = stream(gateway, "first strict stream")
    assert answer == "echo: first strict stream"
    assert usage is not None and usage.completion_tokens > 0, "the client asked for usage: it gets the estimate"
    record = accounting_record(gateway, request_id)
    assert (record["status"], record["cost_estimated"]) == ("200", "true"), record
    sent = sent_to_strict(fake_provider, "first strict stream")
    assert [("stream_options" in b) for b in sent] == [True, False], "refused once, then sent without it"


def test_later_streams_go_without_stream_options_at_once(gateway, fake_provider):
    stream(gateway, "first of two")
    answer, _, _ = stream(gateway, "second of two")
    assert answer == "echo: second of two"
    assert [("stream_options" in b) for b in sent_to_strict(fake_provider, "second of two")] == [False]
    said = lambda: sum("refuses stream_options" in line for line in list(gateway.process.lines))  # noqa: E731
    wait_for(said, what="the warning")
    assert said() == 1, "said once in the log"


def test_whole_answers_from_the_strict_server_are_untouched(gateway):
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    done = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "whole"}])
    assert done.choices[0].message.content == "echo: whole" and done.usage.prompt_tokens > 0
