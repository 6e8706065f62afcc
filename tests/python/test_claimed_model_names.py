"""A model name no provider serves (`gpt-4o` hard-coded in a client), or a bare name several
providers serve, is routed by a rule whose `when.requested_model` matches it; unclaimed, it is
a 404 `model_not_found`."""

import httpx
import openai
import pytest

from conftest import Gateway, fake_provider_section

POLICY = ('[[rule]]\nname = "claims-gpt4"\nwhen.requested_model = "gpt-4*"\nroute = "a/shred"\n\n'
          '[[rule]]\nname = "claims-echo"\nwhen.requested_model = "echo"\nroute = "b/echo"\n\n'
          '[[rule]]\nname = "default"\nroute = "a/echo"\n')


@pytest.fixture
def two_providers(tmp_path, fake_provider):
    sections = fake_provider_section(fake_provider, name="a") + "\n" + fake_provider_section(fake_provider, name="b")
    gw = Gateway(tmp_path, f'[server]\nregion = "eu-west"\n\n{sections}\n[policy]\nfile = "{{policy}}"\n', policy=POLICY)
    yield gw
    gw.stop()


def test_a_rule_claims_a_name_no_provider_serves_or_several_serve(two_providers):
    client = openai.OpenAI(base_url=two_providers.v1, api_key="unused", max_retries=0)
    for model, rule, target in [("gpt-4o", "claims-gpt4", "a/shred"), ("echo", "claims-echo", "b/echo")]:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert (raw.headers["x-switchyard-rule"], raw.headers["x-switchyard-target"]) == (rule, target)
        assert raw.parse().choices[0].message.content == "echo: hi"
        route = httpx.post(f"{two_providers.v1}/route", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).json()
        assert (route["rule"], route["target"]) == (rule, target), route
    # `models.retrieve` finds a claimed name too (clients check a model before using it).
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("claude-3")
    for unclaimed in ["claude-3", "shred"]:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model=unclaimed, messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body["code"] == "model_not_found" and unclaimed in missing.value.body["message"]
