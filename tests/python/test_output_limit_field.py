"""A request's output limit goes out in the one field its provider reads, whichever the client
used: `max_completion_tokens` to `openai` (and `azure` from api-version 2024-09-01), whose
reasoning models refuse `max_tokens` with a 400 — so a client that sent `max_tokens` to "auto"
(fine for the local engine) failed once the router escalated it —, and `max_tokens` to
`openai-compatible` servers and older Azure versions, which predate `max_completion_tokens` and
ignore it (so the limit a client or a translated Responses request set was not applied).

The fake's `o-series` refuses `max_tokens` as OpenAI's reasoning models do; `metered-legacy`
writes exactly the `max_tokens` it is sent (16 words without), ignoring `max_completion_tokens`."""

import httpx
import openai
import pytest

from conftest import Gateway, fake_provider_section, gateway_config


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    azure_old = fake_provider_section(fake_provider, key_env="AZURE_TEST_KEY", name="azure", kind="azure", base_path="",
                                      extra_keys='api_version = "2024-06-01"\n')
    providers = (fake_provider_section(fake_provider) + fake_provider_section(fake_provider, name="oai", kind="openai") + azure_old)
    gw = Gateway(tmp_path_factory.mktemp("limit-field"), gateway_config(providers),
                 policy='[[rule]]\nname = "hard"\nroute = "oai/o-series"\n', env={"AZURE_TEST_KEY": "az-secret-value"})
    yield gw
    gw.stop()


def client(gw):
    return openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)


def last_sent(fake_provider, path):
    return [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json() if r["path"].endswith(path)][-1]


def ask(gw, model, stream=False, **limit):
    messages = [{"role": "user", "content": "count to ten"}]
    if not stream:
        return client(gw).chat.completions.create(model=model, messages=messages, **limit)
    chunks = list(client(gw).chat.completions.create(model=model, messages=messages, stream=True, **limit))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_routed_to_an_openai_reasoning_model_is_sent_as_max_completion_tokens(gateway, fake_provider, stream):
    answer = ask(gateway, "auto", stream=stream, max_tokens=50)
    text = answer if stream else answer.choices[0].message.content
    assert text == "echo: count to ten"
    sent = last_sent(fake_provider, "/chat/completions")
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent, sent


def test_max_completion_tokens_to_an_openai_compatible_server_is_sent_as_max_tokens(gateway, fake_provider):
    answer = ask(gateway, "fake/metered-legacy", max_completion_tokens=4)
    assert answer.usage.completion_tokens == 4 and answer.choices[0].message.content == "tok tok tok tok"
    sent = last_sent(fake_provider, "/chat/completions")
    assert sent["max_tokens"] == 4 and "max_completion_tokens" not in sent, sent
    # Both sent: `max_completion_tokens` wins, as OpenAI documents, and goes alone.
    assert ask(gateway, "fake/metered-legacy", max_completion_tokens=3, max_tokens=9).usage.completion_tokens == 3
    assert "max_completion_tokens" not in last_sent(fake_provider, "/chat/completions")


def test_a_translated_responses_limit_reaches_an_openai_compatible_server(gateway, fake_provider):
    response = client(gateway).responses.create(model="fake/metered-legacy", input="count to ten", max_output_tokens=5)
    assert response.usage.output_tokens == 5 and response.output_text == "tok tok tok tok tok"
    assert last_sent(fake_provider, "/chat/completions")["max_tokens"] == 5


def test_an_azure_version_before_2024_09_01_gets_max_tokens(gateway, fake_provider):
    answer = ask(gateway, "azure/metered-legacy", max_completion_tokens=2)
    assert answer.usage.completion_tokens == 2
    sent = last_sent(fake_provider, "/chat/completions")
    assert sent["max_tokens"] == 2 and "max_completion_tokens" not in sent, sent


def test_no_limit_goes_as_none(gateway, fake_provider):
    assert ask(gateway, "fake/metered-legacy").usage.completion_tokens == 16
    sent = last_sent(fake_provider, "/chat/completions")
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent
