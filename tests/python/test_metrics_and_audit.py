"""`/metrics` after mixed traffic (every §5 family the traffic produces, counters moving by exactly
the requests sent, savings = baseline price × usage − cost) and the audit log (one JSON line per
request, errors included; a canary in the prompt appears in neither the audit log nor the
gateway's own log)."""

import json
import re
import shutil
import subprocess
import time

import httpx
import pytest

from conftest import Gateway, fake_provider_section, gateway_config

CANARY = "canary-7f3a9c-do-not-log"


def metric_samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def sample(samples, name, **labels):
    for key, value in samples.items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    return None


@pytest.fixture(scope="module")
def observed(tmp_path_factory, fake_provider):
    tmp = tmp_path_factory.mktemp("metrics")
    audit = tmp / "logs" / "audit.jsonl"
    extra = fake_provider_section(fake_provider) + f'[metrics]\nbaseline_model = "fake/echo"\n\n[audit]\npath = "{audit}"\n'
    gw = Gateway(tmp, gateway_config(extra), '[[rule]]\nname = "default"\nroute = "local"\n')
    v1 = gw.v1
    sent = [
        httpx.post(f"{v1}/chat/completions", timeout=60, json={"model": "auto", "max_tokens": 3, "messages": [{"role": "user", "content": f"Say hi {CANARY}"}]}),
        httpx.post(f"{v1}/chat/completions", timeout=30, json={"model": "fake/echo", "messages": [{"role": "user", "content": f"ping {CANARY}"}]}),
        httpx.post(f"{v1}/chat/completions", timeout=30, json={"model": "fake/echo", "messages": [{"role": "user", "content": "pong"}]}),
        httpx.post(f"{v1}/chat/completions", timeout=30, json={"model": "fake/fail", "messages": [{"role": "user", "content": "x"}]}),
        httpx.post(f"{v1}/chat/completions", json={"model": "auto", "messages": []}),
        httpx.post(f"{v1}/chat/completions", timeout=30, json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "s"}]}),
    ]
    # A stream that breaks after its first chunk counts as an upstream error too.
    httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"malformed": True}]}).raise_for_status()
    broken = httpx.post(f"{v1}/chat/completions", timeout=30, json={"model": "fake/echo", "stream": True, "messages": [{"role": "user", "content": "b"}]})
    assert broken.status_code == 200 and '"error"' in broken.text
    sent.append(broken)
    assert [r.status_code for r in sent[:6]] == [200, 200, 200, 502, 400, 200]
    deadline = time.monotonic() + 10
    lines = []
    while time.monotonic() < deadline:
        lines = audit.read_text().splitlines() if audit.exists() else []
        if len(lines) >= len(sent):
            break
        time.sleep(0.02)
    yield gw, sent, [json.loads(l) for l in lines], httpx.get(f"{gw.base}/metrics").text
    gw.stop()


def test_a_stream_broken_mid_way_is_logged_with_its_request_id(observed):
    gw, sent, _, _ = observed
    request_id = sent[-1].headers["x-request-id"]
    logged = [line for line in gw.process.lines if "stream failed after its first chunk" in line]
    assert logged and all(f"request_id={request_id}" in line for line in logged), logged


def test_every_metric_family_the_traffic_produces_is_exported(observed):
    _, _, _, text = observed
    for name in ["switchyard_requests_total", "switchyard_request_duration_seconds", "switchyard_time_to_first_token_seconds",
                 "switchyard_tokens_total", "switchyard_cost_usd_total", "switchyard_savings_usd_total",
                 "switchyard_upstream_errors_total", "switchyard_circuit_open", "switchyard_engine_queue_depth",
                 "switchyard_engine_active_sequences", "switchyard_engine_kv_cells_used", "switchyard_cache_hits_total"]:
        assert f"# TYPE {name} " in text, name


def test_counters_move_by_exactly_the_requests_sent(observed):
    _, _, _, text = observed
    s = metric_samples(text)
    assert sample(s, "switchyard_requests_total", rule="explicit", target="fake/echo", tier="remote", status="200") == 4
    assert sample(s, "switchyard_requests_total", rule="default", target="local/local-small", tier="local", status="200") == 1
    assert sample(s, "switchyard_requests_total", target="none", status="400") == 1
    assert sample(s, "switchyard_requests_total", target="fake/fail", tier="remote", status="502") == 1, "a failure counts against its target"
    assert sample(s, "switchyard_upstream_errors_total", provider="fake", kind="upstream") == 2, "502 before, malformed after the first byte"
    assert sample(s, "switchyard_tokens_total", target="fake/echo", kind="prompt") == 33 + 1, "the broken stream is estimated"
    assert sample(s, "switchyard_request_duration_seconds_count", target="fake/echo") == 4
    # Measured in microseconds: four fast answers from the fake still add up to more than 0.
    assert sample(s, "switchyard_request_duration_seconds_sum", target="fake/echo") > 0
    assert sample(s, "switchyard_time_to_first_token_seconds_count", target="fake/echo") == 2


def test_savings_equal_baseline_price_times_usage_minus_cost(observed):
    _, sent, records, text = observed
    local = next(r for r in records if r["request_id"] == sent[0].headers["x-request-id"])
    # fake/echo costs $1/Mtok in, $2/Mtok out; the local answer cost 0; fake/echo answers save 0.
    expected = (local["prompt_tokens"] * 1.0 + local["completion_tokens"] * 2.0) / 1e6
    assert sample(metric_samples(text), "switchyard_savings_usd_total", tenant="default") == pytest.approx(expected, rel=1e-9)
    echo_cost = sum((r["prompt_tokens"] * 1.0 + r["completion_tokens"] * 2.0) / 1e6 for r in records if r["target"] == "fake/echo")
    assert sample(metric_samples(text), "switchyard_cost_usd_total", target="fake/echo", tenant="default") == pytest.approx(echo_cost, rel=1e-9)
    assert echo_cost == pytest.approx(sum(r["cost_usd"] for r in records if r["target"] == "fake/echo"), rel=1e-9)


def test_audit_has_one_line_per_request_errors_included_and_no_text(observed):
    gw, sent, records, _ = observed
    assert sorted(r["request_id"] for r in records) == sorted(r.headers["x-request-id"] for r in sent)
    assert sorted(r["status"] for r in records) == [200, 200, 200, 200, 200, 400, 502]
    fields = {"ts", "request_id", "tenant", "rule", "target", "tier", "status", "prompt_tokens", "completion_tokens",
              "cost_usd", "cost_estimated", "latency_ms", "ttft_ms", "cache", "redacted", "pii_kinds"}
    assert all(set(r) == fields for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
    assert CANARY not in json.dumps(records)
    assert not any(CANARY in line for line in gw.process.lines)


def test_promtool_accepts_the_exposition(observed):
    assert shutil.which("promtool"), "promtool is missing: `make test` installs it (make promtool)"
    _, _, _, text = observed
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_embeddings_save_nothing_against_the_chat_baseline(tmp_path, fake_provider):
    # The baseline is a chat model: pricing an embedding's tokens there would inflate the savings.
    extra = fake_provider_section(fake_provider) + '[metrics]\nbaseline_model = "fake/echo"\n'
    gw = Gateway(tmp_path, gateway_config(extra, embeddings=True), '[[rule]]\nname = "default"\nroute = "local"\n')
    try:
        r = httpx.post(f"{gw.v1}/embeddings", json={"model": "auto", "input": ["a few words to embed"]}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 0
        s = metric_samples(httpx.get(f"{gw.base}/metrics").text)
        assert sample(s, "switchyard_requests_total", rule="embeddings", status="200") == 1
        assert (sample(s, "switchyard_savings_usd_total", tenant="default") or 0.0) == 0.0
    finally:
        gw.stop()
