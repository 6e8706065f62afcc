"""Privacy and residency end to end: redact-and-restore against a recording fake upstream (the
provider never sees the values, the client gets them back, streams included), the per-request
privacy guard (reroute with `x-switchyard-rerouted: 1`, or 403 `policy_violation`), tenants
with virtual keys and residency, and the static residency check."""

import hashlib
import json
import re
import subprocess

import httpx
import openai
import pytest

from conftest import BIN, ROOT, Gateway, auth_failures, fake_provider_section, fake_requests, gateway_config, parse_chunks, sse_events

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
IBAN = "DE89 3704 0044 0532 0130 00"
SECRET_TEXT = f"Please write to {EMAIL}, call {PHONE} and refund to {IBAN}."

REDACTING_POLICY = """
on_violation = "reroute"

[[rule]]
name = "leaks-are-rejected"
when.requested_model = "fake/fail"
route = "fake/fail"
on_violation = "reject"

[[rule]]
name = "stream-redacted"
when.requested_model = "fake/shred"
route = "fake/shred"
redact = true

[[rule]]
name = "tools-redacted"
when.requested_model = "fake/tool-echo"
route = "fake/tool-echo"
redact = true

[[rule]]
name = "escalate-redacted"
when.privacy = ["pii"]
route = "fake/echo"
redact = true

[[rule]]
name = "default"
route = "fake/echo"
"""


@pytest.fixture(scope="module")
def redacting(tmp_path_factory, fake_provider):
    gw = Gateway(tmp_path_factory.mktemp("redact"), gateway_config(fake_provider_section(fake_provider)), REDACTING_POLICY)
    yield gw
    gw.stop()


def sent_since(fake_provider, before):
    return fake_requests(fake_provider)[before:]


def assert_no_values(bodies):
    text = json.dumps(bodies)
    for value in (EMAIL, PHONE, IBAN, "7946"):
        assert value not in text, f"{value!r} reached the provider: {text}"


def test_redacted_request_never_shows_values_upstream_and_answer_is_restored(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    client = openai.OpenAI(base_url=redacting.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": SECRET_TEXT}])
    answer = raw.parse().choices[0].message.content
    assert answer == f"echo: {SECRET_TEXT}"
    assert raw.headers["x-switchyard-rule"] == "escalate-redacted"
    assert raw.headers["x-switchyard-target"] == "fake/echo"
    sent = sent_since(fake_provider, before)
    assert len(sent) == 1
    assert_no_values(sent)
    assert sent[0]["messages"][-1]["content"] == "Please write to <EMAIL_1>, call <PHONE_1> and refund to <IBAN_1>."


def test_pii_outside_message_text_is_found_and_redacted_too(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    tools = [{"type": "function", "function": {"name": "notify", "description": f"Notify {EMAIL}",
                                               "parameters": {"type": "object", "properties": {"to": {"type": "string", "enum": [EMAIL]}}}}}]
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hello there"}], "tools": tools,
            "user": EMAIL, "metadata": {"owner": PHONE}, "x_note": f"ticket for {IBAN}"}
    route = httpx.post(f"{redacting.v1}/route", json=body).json()
    assert route["privacy"]["pii"], route
    r = httpx.post(f"{redacting.v1}/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-rule"] == "escalate-redacted" and r.headers["x-switchyard-target"] == "fake/echo"
    sent = sent_since(fake_provider, before)
    assert len(sent) == 1
    assert_no_values(sent)
    assert sent[0]["tools"][0]["function"]["name"] == "notify" and sent[0]["user"] == "<EMAIL_1>"


def test_stream_restores_placeholders_split_across_chunks(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    with httpx.stream("POST", f"{redacting.v1}/chat/completions", timeout=30, json={
        "model": "fake/shred", "stream": True, "messages": [{"role": "user", "content": SECRET_TEXT}],
    }) as r:
        assert r.status_code == 200
        assert r.headers["x-switchyard-rule"] == "stream-redacted"
        chunks = parse_chunks(sse_events(r))
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert "".join(pieces) == f"echo: {SECRET_TEXT}"
    sent = sent_since(fake_provider, before)
    assert_no_values(sent)
    # The fake streams 3 characters a chunk, so `<EMAIL_1>` (9 characters) arrived split.
    assert "<EMAIL_1>" in sent[0]["messages"][-1]["content"]
    assert len(pieces) > 10


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_answer_gets_values_back_escaped_for_json(redacting, fake_provider, stream):
    # A value with a tab (the scanner reads a card number written with tabs) put back raw into a
    # JSON answer made it invalid JSON; with `response_format` JSON, it goes back escaped.
    record = '{"card": "4111\t1111\t1111\t1111"}'  # real tabs, as a form's field may hold them
    body = {"model": "fake/shred" if stream else "auto", "stream": stream, "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": record}]}
    before = len(fake_requests(fake_provider))
    if stream:
        with httpx.stream("POST", f"{redacting.v1}/chat/completions", timeout=30, json=body) as r:
            assert r.status_code == 200
            chunks = parse_chunks(sse_events(r))
        answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    else:
        r = httpx.post(f"{redacting.v1}/chat/completions", timeout=30, json=body)
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
    assert "<CREDIT_CARD_1>" in json.dumps(sent_since(fake_provider, before)) and "4111" not in json.dumps(sent_since(fake_provider, before))
    # The fake echoes the record after "echo: ".
    assert json.loads(answer.removeprefix("echo: ")) == {"card": "4111\t1111\t1111\t1111"}, answer


TOOLS = {
    "function": [{"type": "function", "function": {"name": "send", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}],
    "custom": [{"type": "custom", "custom": {"name": "send"}}],
}


def call_input(call):
    return call["function"]["arguments"] if call["type"] == "function" else call["custom"]["input"]


# A value written with tabs goes back into a function's JSON arguments escaped (a raw tab made
# them invalid JSON).
@pytest.mark.parametrize("text", [SECRET_TEXT, "card 4111\t1111\t1111\t1111 please"])
@pytest.mark.parametrize("kind", ["function", "custom"])
def test_tool_call_input_is_restored_whole_and_streamed(redacting, fake_provider, kind, text):
    # The provider writes the placeholders into a tool call's input (a function's arguments, a
    # custom tool's input); the client's tool must get the real values, streamed (the placeholders
    # arrive split, three characters a piece) or not.
    before = len(fake_requests(fake_provider))
    body = {"model": "fake/tool-echo", "messages": [{"role": "user", "content": text}], "tools": TOOLS[kind]}
    r = httpx.post(f"{redacting.v1}/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["x-switchyard-rule"] == "tools-redacted", r.text
    whole = call_input(r.json()["choices"][0]["message"]["tool_calls"][0])
    with httpx.stream("POST", f"{redacting.v1}/chat/completions", timeout=30, json={**body, "stream": True}) as r:
        chunks = parse_chunks(sse_events(r))
    streamed = "".join(call_input({"type": kind, **call}) if kind in call else ""
                       for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or [])
    if kind == "function":
        assert json.loads(whole) == {"text": text}, whole
    else:
        assert whole == text, whole
    assert streamed == whole, (streamed, whole)
    sent = sent_since(fake_provider, before)
    assert len(sent) == 2
    assert_no_values(sent)
    assert "1111" not in json.dumps(sent)


# A tag with bytes beyond ASCII must not hide the others.
@pytest.mark.parametrize("tags", [b"confidential", "confidential,café".encode()])
def test_privacy_tagged_request_is_rerouted_locally_when_the_rule_does_not_redact(redacting, fake_provider, tags):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", timeout=60, headers={"x-switchyard-tags": tags},
                   json={"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-rule"] == "default"
    assert r.headers["x-switchyard-target"] == "local/local-small"
    assert r.headers["x-switchyard-rerouted"] == "1"
    assert sent_since(fake_provider, before) == []


def test_explicit_untrusted_model_with_pii_is_rerouted(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", timeout=60,
                   json={"model": "fake/echo", "max_tokens": 2, "messages": [{"role": "user", "content": f"mail {EMAIL}"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-rule"] == "explicit"
    assert r.headers["x-switchyard-tier"] == "local"
    assert r.headers["x-switchyard-rerouted"] == "1"
    assert sent_since(fake_provider, before) == []


def test_reject_rule_answers_403_policy_violation_without_calling_upstream(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", timeout=30,
                   json={"model": "fake/fail", "messages": [{"role": "user", "content": f"my card 4111 1111 1111 1111"}]})
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "policy_violation" and "leaks-are-rejected" in err["message"]
    assert "4111" not in r.text
    assert sent_since(fake_provider, before) == []


def test_route_shows_pii_kinds_and_counts_never_values(redacting):
    r = httpx.post(f"{redacting.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": SECRET_TEXT + f" cc {EMAIL}"}]})
    d = r.json()
    assert d["privacy"]["pii"] == {"email": 2, "phone": 1, "iban": 1}
    assert "pii" in d["privacy"]["tags"]
    assert d["rule"] == "escalate-redacted" and d["redact"] is True
    assert any("escalate-redacted" in reason for reason in d["reasons"])
    for value in (EMAIL, "7946", "3704"):
        assert value not in r.text


def test_pii_written_with_other_spaces_digits_and_dashes_is_found_and_redacted(redacting, fake_provider):
    text = "Call 06\u00a012\u00a034\u00a056\u00a078 or 415\u2013555\u20130132, card \uff14\uff11\uff11\uff11 1111 1111 1111, db at 10.0.0.5:8080"
    d = httpx.post(f"{redacting.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": text}]}).json()
    assert d["privacy"]["pii"] == {"phone": 2, "credit_card": 1, "ip_address": 1}, d
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    sent = json.dumps(sent_since(fake_provider, before), ensure_ascii=False)
    for value in ("12\u00a034", "555\u20130132", "\uff14\uff11", "10.0.0.5"):
        assert value not in sent, sent
    # The answer (the fake echoes) gets the values back, as written.
    assert "06\u00a012\u00a034\u00a056\u00a078" in r.json()["choices"][0]["message"]["content"]


def test_image_content_is_unscannable_and_does_not_leave_unredacted(redacting, fake_provider):
    before = len(fake_requests(fake_provider))
    body = {"model": "fake/echo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]}
    d = httpx.post(f"{redacting.v1}/route", json=body).json()
    assert d["privacy"]["pii"] == {"unscannable": 1}
    # The text-only local engine cannot take it instead: refused, naming the privacy rule
    # (it used to be rerouted there and answered "the local model accepts text content only").
    assert "not trusted" in d["violation"] and "reads text only" in d["violation"], d
    r = httpx.post(f"{redacting.v1}/chat/completions", json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "policy_violation"
    assert "not trusted" in r.json()["error"]["message"] and "reads text only" in r.json()["error"]["message"]
    assert sent_since(fake_provider, before) == []


# --- tenants, keys, residency ---------------------------------------------------------------

def new_key(tenant):
    out = subprocess.run([str(BIN), "keys", "new", "--tenant", tenant], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    key = re.search(r"(sy-[0-9a-f]{64})", out.stdout).group(1)
    entry = re.search(r"(sha256:[0-9a-f]{64})", out.stdout).group(1)
    assert entry == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key, entry


RESIDENCY_POLICY = """
[[rule]]
name = "default"
route = "fakeeu/echo"
fallback = ["local"]
"""


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, fake_provider):
    eu_key, eu_hash = new_key("acme-eu")
    tagged_key, tagged_hash = new_key("globex")
    extra = (
        fake_provider_section(fake_provider, name="fake", region="us-east")
        + fake_provider_section(fake_provider, name="fakeeu", kind="openai", region="eu-central", trusted=True)
        + f'[[tenants]]\nname = "acme-eu"\nkeys = ["{eu_hash}"]\nresidency = ["eu"]\n'
        + f'[[tenants]]\nname = "globex"\nkeys = ["{tagged_hash}"]\ntags = ["confidential"]\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("tenants"), gateway_config(extra), RESIDENCY_POLICY)
    gw.keys = {"acme-eu": eu_key, "globex": tagged_key}
    yield gw
    gw.stop()


def chat(gw, key, model="auto", content="Hi", headers=None):
    h = {"authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    return httpx.post(f"{gw.v1}/chat/completions", timeout=60, headers=h,
                      json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})


@pytest.mark.parametrize("tenant, says", [(" ", "--tenant must name a tenant"), ("team\nb", "holds control, format, bidirectional"),
                                         ("b\u202ex", "holds control, format, bidirectional"), ("acme\u3164", "holds control, format, bidirectional"),
                                         ("acme ", "(or spaces around it)")])
def test_keys_new_refuses_a_tenant_name_the_configuration_would_refuse(tenant, says):
    out = subprocess.run([str(BIN), "keys", "new", "--tenant", tenant], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and says in out.stderr, out.stderr
    assert "sy-" not in out.stdout, "no key is printed"


def test_missing_or_unknown_key_is_401_and_health_needs_none(tenants):
    before = auth_failures(tenants, "api")
    for key in (None, "sy-" + "0" * 64):
        r = chat(tenants, key)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert "0" * 64 not in r.text
    # Refused before any accounting, counted so that key guessing can be seen.
    assert auth_failures(tenants, "api") == before + 2
    assert httpx.get(f"{tenants.base}/healthz").status_code == 200


def test_tenant_key_is_served_inside_its_residency(tenants):
    r = chat(tenants, tenants.keys["acme-eu"])
    assert r.status_code == 200, r.text
    # The scheme name is case-insensitive (RFC 9110).
    assert chat(tenants, None, headers={"authorization": f"BEARER {tenants.keys['acme-eu']}"}).status_code == 200
    assert r.headers["x-switchyard-target"] == "fakeeu/echo"
    assert "x-switchyard-rerouted" not in r.headers


def test_explicit_model_outside_residency_is_rerouted_even_without_pii(tenants):
    r = chat(tenants, tenants.keys["acme-eu"], model="fake/echo")
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] == "local/local-small"
    assert r.headers["x-switchyard-rerouted"] == "1"
    d = httpx.post(f"{tenants.v1}/route", headers={"authorization": f"Bearer {tenants.keys['acme-eu']}"},
                   json={"model": "fake/echo", "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert any("residency" in reason for reason in d["reasons"]), d


def test_tenant_tags_make_every_request_private(tenants):
    trusted = chat(tenants, tenants.keys["globex"])
    assert trusted.headers["x-switchyard-target"] == "fakeeu/echo", "a trusted provider may see tagged data"
    untrusted = chat(tenants, tenants.keys["globex"], model="fake/echo")
    assert untrusted.headers["x-switchyard-target"] == "local/local-small"
    assert untrusted.headers["x-switchyard-rerouted"] == "1"


def test_check_refuses_a_route_outside_a_tenants_residency(tmp_path, fake_provider):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "everything-to-us"\nroute = "fake/echo"\n')
    cfg = tmp_path / "g.toml"
    extra = fake_provider_section(fake_provider, region="us-east") + '[[tenants]]\nname = "acme-eu"\nresidency = ["eu"]\n'
    cfg.write_text(gateway_config(extra).replace("{policy}", str(policy)))
    r = subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{policy}:3:" in r.stderr
    assert '"everything-to-us".route' in r.stderr and "us-east" in r.stderr and '"acme-eu"' in r.stderr
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                           env={"SWITCHYARD_LISTEN": "127.0.0.1:0", "PATH": "/usr/bin:/bin"})
    assert serve.returncode != 0 and "everything-to-us" in serve.stderr


def test_check_warns_about_rules_relying_on_the_guard(tmp_path, fake_provider):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "all-out"\nroute = "fake/echo"\n')
    cfg = tmp_path / "g.toml"
    cfg.write_text(gateway_config(fake_provider_section(fake_provider)).replace("{policy}", str(policy)))
    r = subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and '"all-out".route' in r.stderr and "privacy guard" in r.stderr


def test_explain_takes_a_tenant_and_tags(tmp_path):
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]})
    r = subprocess.run([str(BIN), "explain", "--config", "config/gateway.toml", "--tags", "confidential", "-"],
                       cwd=ROOT, input=body, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["privacy"]["tags"] == ["confidential", "pii"] and d["privacy"]["pii"] == {"email": 1}
    assert d["rule"] == "private-stays-home" and EMAIL not in r.stdout


def test_a_refusal_part_is_text_not_unscannable_content(redacting, fake_provider):
    # An earlier refusal in the conversation is text: scanned like text, and no reason to keep
    # the request away from a provider.
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", timeout=60, json={"model": "fake/echo", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot"}]},
        {"role": "user", "content": "ok"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-target"] == "fake/echo"
    sent = sent_since(fake_provider, before)
    assert sent[0]["messages"][1]["content"] == [{"type": "refusal", "refusal": "I cannot"}]


def test_the_default_policy_keeps_every_tagged_request_home(tmp_path, fake_provider):
    # Its comment promises that anything privacy-tagged stays local; it listed four tags only.
    policy = (ROOT / "policies" / "default.toml").read_text()
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider)), policy)
    try:
        for tags in ["restricted", "PHI", "confidential"]:
            d = httpx.post(f"{gw.v1}/route", headers={"x-switchyard-tags": tags},
                           json={"model": "auto", "messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational, step by step."}]}).json()
            assert (d["rule"], d["target"]) == ("private-stays-home", "local/local-small"), (tags, d)
        untagged = httpx.post(f"{gw.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}).json()
        assert untagged["rule"] == "default", untagged
    finally:
        gw.stop()


def test_redaction_does_not_lift_a_callers_tag(redacting, fake_provider):
    # The rule redacts PII; the caller's `secret` tag marks the whole text, which redaction cannot
    # make safe for an untrusted provider: it stays home (it went out as written).
    before = len(fake_requests(fake_provider))
    r = httpx.post(f"{redacting.v1}/chat/completions", timeout=60, headers={"x-switchyard-tags": "secret"},
                   json={"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": f"Project Falcon: acquire Acme. Mail {EMAIL}"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-rule"] == "escalate-redacted" and r.headers["x-switchyard-tier"] == "local", dict(r.headers)
    assert sent_since(fake_provider, before) == [], "nothing reached the untrusted provider"
