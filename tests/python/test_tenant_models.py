"""A tenant's `models`: the targets its requests may be served by. `auto` routes, explicit models,
fallbacks, embeddings and /v1/models all stay inside the list; a name that matches no configured
target is a configuration error."""

import subprocess

import httpx
import pytest

from conftest import BIN, Gateway, fake_provider_section, gateway_config, new_virtual_key

POLICY = """
[[rule]]
name = "house"
when.requested_model = "house-model"
route = "fake/metered"

[[rule]]
name = "hard"
when.complexity = "hard"
route = "fake/metered"
fallback = ["fake/echo", "local"]

[[rule]]
name = "default"
route = "fake/echo"
fallback = ["local"]
"""

HARD = "Prove step by step that the algorithm's complexity is optimal; derive x^2 = y = z and explain why."


@pytest.fixture(scope="module")
def limited(tmp_path_factory, fake_provider):
    interns_key, interns_entry = new_virtual_key()
    staff_key, staff_entry = new_virtual_key()
    embedders_key, embedders_entry = new_virtual_key()
    tenants = (
        f'[[tenants]]\nname = "interns"\nkeys = ["{interns_entry}"]\nmodels = ["local", "fake/ech*"]\n\n'
        f'[[tenants]]\nname = "staff"\nkeys = ["{staff_entry}"]\n\n'
        f'[[tenants]]\nname = "embedders"\nkeys = ["{embedders_entry}"]\nmodels = ["fake/embed"]\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("tenant-models"), gateway_config(fake_provider_section(fake_provider) + tenants), POLICY)
    gw.embedders = {"Authorization": f"Bearer {embedders_key}"}
    yield gw, {"Authorization": f"Bearer {interns_key}"}, {"Authorization": f"Bearer {staff_key}"}
    gw.stop()


def chat(gw, auth, model, text, **extra):
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=120)


def test_auto_routes_stay_inside_the_list(limited):
    gw, interns, staff = limited
    # The hard rule's route is not among the interns' models: its allowed fallback answers.
    r = chat(gw, interns, "auto", HARD)
    assert r.status_code == 200, r.text
    assert (r.headers["x-switchyard-rule"], r.headers["x-switchyard-target"]) == ("hard", "fake/echo"), dict(r.headers)
    assert r.headers["x-switchyard-rerouted"] == "1"
    route = httpx.post(f"{gw.v1}/route", headers=interns, json={"model": "auto", "messages": [{"role": "user", "content": HARD}]}).json()
    assert route["target"] == "fake/echo" and route["fallbacks"] == ["local/local-small"], route
    assert any('not among the models tenant "interns" may use [local, fake/ech*]' in reason for reason in route["reasons"]), route
    # Another tenant without a list is routed as the rule says.
    r = chat(gw, staff, "auto", HARD)
    assert r.status_code == 200 and r.headers["x-switchyard-target"] == "fake/metered", dict(r.headers)
    assert "x-switchyard-rerouted" not in r.headers


def test_an_explicit_model_outside_the_list_is_not_served(limited):
    gw, interns, staff = limited
    r = chat(gw, interns, "fake/metered", "Say hi")
    # The policy's default on_violation (reroute): served inside the list, and said so.
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] != "fake/metered" and r.headers["x-switchyard-rerouted"] == "1", dict(r.headers)
    assert chat(gw, interns, "fake/echo", "Say hi").headers["x-switchyard-target"] == "fake/echo"
    assert chat(gw, staff, "fake/metered", "Say hi").headers["x-switchyard-target"] == "fake/metered"


def test_models_and_embeddings_follow_the_list(limited):
    gw, interns, staff = limited
    listed = {m["id"] for m in httpx.get(f"{gw.v1}/models", headers=interns).json()["data"]}
    assert {"local-small", "fake/echo", "auto"} <= listed, listed
    assert "fake/metered" not in listed and "fake/embed" not in listed, listed
    assert httpx.get(f"{gw.v1}/models/fake/metered", headers=interns).status_code == 404
    assert "fake/metered" in {m["id"] for m in httpx.get(f"{gw.v1}/models", headers=staff).json()["data"]}
    refused = httpx.post(f"{gw.v1}/embeddings", headers=interns, json={"model": "fake/embed", "input": "hello"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "policy_violation" and "not among the models" in refused.json()["error"]["message"]
    assert httpx.post(f"{gw.v1}/embeddings", headers=staff, json={"model": "fake/embed", "input": "hello"}).status_code == 200


def test_names_a_tenant_cannot_reach_are_not_offered(limited):
    gw, interns, staff = limited
    # `house-model` is claimed by a rule routing to fake/metered: the interns reach it through
    # the local engine (rerouted), the embedders not at all.
    assert httpx.get(f"{gw.v1}/models/house-model", headers=staff).status_code == 200
    assert httpx.get(f"{gw.v1}/models/house-model", headers=interns).status_code == 200
    assert httpx.get(f"{gw.v1}/models/house-model", headers=gw.embedders).status_code == 404
    # Nothing chat could serve them: no `auto` either; what they may use is listed.
    listed = {m["id"] for m in httpx.get(f"{gw.v1}/models", headers=gw.embedders).json()["data"]}
    assert listed == {"fake/embed"}, listed
    r = chat(gw, gw.embedders, "auto", "Say hi")
    assert r.status_code == 403, r.text
    # The refusal's reason is logged for the operator, with the request's id.
    request_id = r.headers["x-request-id"]
    assert any("request refused by the privacy, residency or models guard" in line and request_id in line
               and "not among the models" in line for line in gw.process.lines), gw.process.lines[-5:]


def test_a_reject_policy_refuses_with_403(tmp_path, fake_provider):
    key, entry = new_virtual_key()
    config = gateway_config(fake_provider_section(fake_provider) + f'[[tenants]]\nname = "interns"\nkeys = ["{entry}"]\nmodels = ["local"]\n')
    gw = Gateway(tmp_path, config, 'on_violation = "reject"\n' + POLICY.replace('fallback = ["local"]\n', ""))
    try:
        r = chat(gw, {"Authorization": f"Bearer {key}"}, "fake/echo", "Say hi")
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "policy_violation" and "not among the models" in r.json()["error"]["message"]
    finally:
        gw.stop()


def test_an_entry_naming_no_configured_target_is_a_configuration_error(tmp_path, fake_provider):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    config = tmp_path / "gateway.toml"
    tenants = '[[tenants]]\nname = "interns"\nmodels = ["local", "fake/gpt-5", "openai/*"]\n'
    config.write_text(gateway_config(fake_provider_section(fake_provider) + tenants).replace("{policy}", str(policy)))
    r = subprocess.run([str(BIN), "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'tenants[0]: models[1] = "fake/gpt-5" matches no configured target' in r.stdout + r.stderr
    assert 'models[2] = "openai/*" matches no configured target' in r.stdout + r.stderr
    assert "models[0]" not in r.stdout + r.stderr
    # `check` shows each tenant's list.
    config.write_text(config.read_text().replace(', "fake/gpt-5", "openai/*"', ""))
    r = subprocess.run([str(BIN), "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "models [local]" in r.stdout, r.stdout + r.stderr
