"""A rule's fallback takes a request its route cannot serve, not only one it failed: a prompt
longer than the local engine's context goes to the remote fallback, and a field Anthropic's API
cannot carry (`json_object`) to the local one. A provider's own 4xx does not fall back."""

import httpx
import pytest

from conftest import Gateway, fake_provider_section, gateway_config

POLICY = ('[[rule]]\nname = "claude-first"\nwhen.requested_model = "anthropic/*"\nroute = "anthropic/echo"\nfallback = ["local"]\n\n'
          '[[rule]]\nname = "home"\nroute = "local"\nfallback = ["fake/echo"]\n')


@pytest.fixture(scope="module")
def gw(tmp_path_factory, fake_provider):
    anthropic = (f'[[providers]]\nname = "anthropic"\nkind = "anthropic"\nbase_url = "{fake_provider}"\napi_key_env = "ANTHROPIC_TEST_KEY"\n'
                 'trusted = true\nmodels = [{ name = "echo", input_per_mtok = 3.0, output_per_mtok = 15.0 }]\n')
    g = Gateway(tmp_path_factory.mktemp("refusals"), gateway_config(fake_provider_section(fake_provider, trusted=True) + anthropic),
                policy=POLICY, env={"ANTHROPIC_TEST_KEY": "sk-ant-test"})
    yield g
    g.stop()


def ask(gw, **body):
    return httpx.post(f"{gw.v1}/chat/completions", json={"max_tokens": 8, **body}, timeout=60)


def test_a_prompt_longer_than_the_local_context_goes_to_the_fallback(gw):
    # 4096 cells for 4 sequences: 1024 each; this prompt is ~1,500 tokens.
    long = " ".join(f"item{i}" for i in range(1500))
    r = ask(gw, model="auto", messages=[{"role": "user", "content": long}])
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] == "fake/echo"


def test_a_field_anthropic_cannot_carry_goes_to_the_local_fallback(gw):
    r = ask(gw, model="anthropic/echo", response_format={"type": "json_object"}, messages=[{"role": "user", "content": "A cat as JSON."}])
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] == "local/local-small"


def test_a_providers_own_4xx_does_not_fall_back(gw, fake_provider):
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"status": 400, "type": "invalid_request_error", "message": "bad"}]}).raise_for_status()
    r = ask(gw, model="anthropic/echo", messages=[{"role": "user", "content": "hi"}])
    assert r.status_code == 400 and r.headers.get("x-switchyard-target") != "local/local-small", r.text
