"""Shadow evaluation end to end against a scripted fake judge: sampled local answers are
compared off the client's path with a remote answer, judged twice with the positions swapped,
and stored; privacy-tagged requests and opted-out tenants are never sampled; the shadow budget
and concurrency cap drop (and count) comparisons; `switchyard calibrate --from-shadow` reads the
store."""

import json
import re
import subprocess

import httpx
import pytest

from conftest import (BIN, Gateway, fake_provider_section, fake_requests, gateway_config, new_virtual_key, wait_for)
from test_metrics_and_audit import metric_samples, sample

POLICY = '[[rule]]\nname = "local"\nroute = "local"\n'


def shadow_gateway(tmp, fake_provider, judge="fake/judge", daily_usd=1.0, max_in_flight=4, remote="fake/echo", tenants=""):
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / "shadow.jsonl"
    extra = (fake_provider_section(fake_provider) + tenants +
             f'[shadow]\nsample = 1.0\njudge = "{judge}"\nremote = "{remote}"\nstore = "{store}"\n'
             f"daily_usd = {daily_usd}\nmax_in_flight = {max_in_flight}\n")
    return Gateway(tmp, gateway_config(extra), POLICY), store


def records(store):
    if not store.exists():
        return []
    return [json.loads(line) for line in store.read_text().splitlines() if line.strip()]


def ask(gw, text, headers=None, stream=False, key=None):
    headers = dict(headers or {})
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0,
            "stream": stream}
    r = httpx.post(f"{gw.v1}/chat/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return r


def judge_prompts(fake_provider, before):
    return [b for b in fake_requests(fake_provider)[before:] if b["model"].startswith("judge")]


def shadow_metrics(gw):
    return metric_samples(httpx.get(f"{gw.base}/metrics").text)


@pytest.fixture(scope="module")
def judged(tmp_path_factory, fake_provider):
    gw, store = shadow_gateway(tmp_path_factory.mktemp("shadow"), fake_provider)
    yield gw, store
    gw.stop()


def test_local_answers_are_compared_off_path_with_swapped_positions(judged, fake_provider):
    gw, store = judged
    before = len(fake_requests(fake_provider))
    plain = ask(gw, "Name a colour. shadow-case-1")
    streamed = ask(gw, "Name a fruit. shadow-case-2", stream=True)
    assert plain.headers["x-switchyard-tier"] == "local"
    local_text = plain.json()["choices"][0]["message"]["content"]
    assert not local_text.startswith("echo:"), "the client gets the local answer, unchanged"
    wait_for(lambda: len(records(store)) == 2, timeout=30, what="two shadow records")

    by_prompt = {("shadow-case-1" in r["prompt"]): r for r in records(store)}
    rec = by_prompt[True]
    assert rec["local_answer"] == local_text
    assert rec["remote_answer"] == "echo: Name a colour. shadow-case-1"
    assert rec["remote_target"] == "fake/echo" and rec["judge"] == "fake/judge"
    assert rec["local_target"] == "local/local-small"
    # The scripted judge prefers the echoed answer in both positions: a consistent verdict.
    assert rec["votes"] == ["remote", "remote"] and rec["verdict"] == "remote"
    assert rec["weak_score"] == 0.0 and rec["strong_score"] == 1.0
    assert rec["turns"] == 1
    assert 0.0 <= rec["complexity"] <= 1.0 and rec["complexity_bucket"] in {"0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"}
    assert rec["cost_usd"] > 0
    assert by_prompt[False]["local_answer"], "a streamed local answer is compared once it ends"

    # The remote model got the client's own conversation; the judge got both orders.
    sent = fake_requests(fake_provider)[before:]
    asked = [b for b in sent if b["model"] == "echo"]
    assert {json.dumps(b["messages"]) for b in asked} == {
        json.dumps([{"role": "user", "content": "Name a colour. shadow-case-1"}]),
        json.dumps([{"role": "user", "content": "Name a fruit. shadow-case-2"}])}
    prompts = [b["messages"][0]["content"] for b in judge_prompts(fake_provider, before) if "shadow-case-1" in b["messages"][0]["content"]]
    assert len(prompts) == 2
    first_a = [p.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End", 1)[0] for p in prompts]
    assert sorted(first_a) == sorted([local_text, "echo: Name a colour. shadow-case-1"]), "positions swapped"

    samples = shadow_metrics(gw)
    bucket = rec["complexity_bucket"]
    assert sample(samples, "switchyard_shadow_comparisons_total", complexity_bucket=bucket, verdict="remote") >= 1
    assert sample(samples, "switchyard_shadow_win_rate", complexity_bucket=bucket) == 0.0
    stats = httpx.get(f"{gw.base}/admin/stats").json()["shadow"]
    assert stats["buckets"][bucket]["remote"] >= 1 and stats["spent_today_usd"] > 0
    # Shadow calls never reach the tenant's accounting: one client request, one record.
    assert sample(samples, "switchyard_requests_total", target="fake/echo") is None


def test_privacy_tagged_requests_are_never_sampled(judged, fake_provider):
    gw, store = judged
    wait_for(lambda: len(records(store)) >= 2, timeout=30, what="earlier records")
    count = len(records(store))
    before = len(fake_requests(fake_provider))
    ask(gw, "Name a tree. tagged-by-caller", headers={"x-switchyard-tags": "confidential"})
    ask(gw, "Write to jane.doe@example.com about a tree.")
    # A later untagged request is compared: once its record is there, the tagged ones had their chance.
    ask(gw, "Name a river. after-the-tagged")
    wait_for(lambda: len(records(store)) == count + 1, timeout=30, what="the untagged request's record")
    assert "after-the-tagged" in records(store)[-1]["prompt"]
    sent = json.dumps(fake_requests(fake_provider)[before:])
    assert "tagged-by-caller" not in sent and "jane.doe" not in sent


def test_opted_out_tenants_are_never_sampled(tmp_path, fake_provider):
    out_key, in_key = new_virtual_key(), new_virtual_key()  # (key, config entry)
    tenants = (f'[[tenants]]\nname = "private-co"\nkeys = ["{out_key[1]}"]\nshadow = false\n\n'
               f'[[tenants]]\nname = "open-co"\nkeys = ["{in_key[1]}"]\n\n')
    gw, store = shadow_gateway(tmp_path, fake_provider, tenants=tenants)
    try:
        ask(gw, "Name a bird. opted-out", key=out_key[0])
        ask(gw, "Name a fish. opted-in", key=in_key[0])
        wait_for(lambda: len(records(store)) == 1, timeout=30, what="the opted-in tenant's record")
        assert records(store)[0]["tenant"] == "open-co"
        assert "opted-out" not in json.dumps(fake_requests(fake_provider))
    finally:
        gw.stop()


def test_tenants_whose_residency_excludes_the_judge_are_never_sampled(tmp_path, fake_provider):
    # The fake provider has no region: nothing sent to it is inside a residency.
    eu_key, open_key = new_virtual_key(), new_virtual_key()
    tenants = (f'[[tenants]]\nname = "eu-co"\nkeys = ["{eu_key[1]}"]\nresidency = ["eu"]\n\n'
               f'[[tenants]]\nname = "open-co"\nkeys = ["{open_key[1]}"]\n\n')
    gw, store = shadow_gateway(tmp_path, fake_provider, tenants=tenants)
    try:
        check = subprocess.run([str(BIN), "check", "--config", str(gw.config_path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and 'outside tenant "eu-co"\'s residency [eu]: that tenant is never shadowed' in check.stderr, check.stderr
        ask(gw, "Name a bird. eu-resident", key=eu_key[0])
        ask(gw, "Name a fish. anywhere", key=open_key[0])
        wait_for(lambda: len(records(store)) == 1, timeout=30, what="the other tenant's record")
        assert records(store)[0]["tenant"] == "open-co"
        assert "eu-resident" not in json.dumps(fake_requests(fake_provider))
    finally:
        gw.stop()


def test_position_swap_cancels_a_biased_judge(tmp_path, fake_provider):
    gw, store = shadow_gateway(tmp_path, fake_provider, judge="fake/judge-first")
    try:
        ask(gw, "Name a planet.")
        wait_for(lambda: len(records(store)) == 1, timeout=30, what="a record")
        rec = records(store)[0]
        assert rec["votes"] == ["local", "remote"], "the judge always picks position A"
        assert rec["verdict"] == "tie" and rec["weak_score"] == 0.5
        assert sample(shadow_metrics(gw), "switchyard_shadow_win_rate", complexity_bucket=rec["complexity_bucket"]) == 1.0
    finally:
        gw.stop()


def test_budget_and_concurrency_caps_drop_and_count(tmp_path, fake_provider):
    # The fake's prices make one comparison cost far more than $0.000001.
    gw, store = shadow_gateway(tmp_path / "budget", fake_provider, daily_usd=0.000001)
    try:
        before = len(fake_requests(fake_provider))
        for i in range(3):
            ask(gw, f"Name a number. over-budget-{i}")
        wait_for(lambda: sample(shadow_metrics(gw), "switchyard_shadow_dropped_total", reason="budget") == 3,
                 timeout=30, what="three budget drops")
        assert records(store) == []
        assert "over-budget" not in json.dumps(fake_requests(fake_provider)[before:])
    finally:
        gw.stop()

    # The first comparison's remote answer comes 5 s late (a scripted fault of the fake), so it
    # holds the only slot while the next two local answers are offered and dropped.
    gw, store = shadow_gateway(tmp_path / "cap", fake_provider, max_in_flight=1)
    try:
        httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"slow_ms": 5000}]}).raise_for_status()
        ask(gw, "Name a shape. first")
        ask(gw, "Name a shape. second")
        ask(gw, "Name a shape. third")
        assert sample(shadow_metrics(gw), "switchyard_shadow_dropped_total", reason="concurrency") == 2
        wait_for(lambda: len(records(store)) == 1, timeout=30, what="the first comparison")
        assert "first" in records(store)[0]["prompt"]
    finally:
        gw.stop()


def live_complexity(text):
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
    out = subprocess.run([str(BIN), "explain", "--config", "config/gateway.toml", "-"], input=body,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["complexity"]


def test_calibrate_from_shadow_scores_the_conversations_with_the_configured_scorer(tmp_path):
    # Longer prompts score higher under the default scorer; the 30 longest were worse locally.
    # The stored scores run the other way (as a scorer since replaced might have given them):
    # calibrating on them would send everything remote.
    prompts = [f"Tell me about {'word ' * (4 * i + 1)}".strip() for i in range(100)]
    lines = []
    for i, prompt in enumerate(prompts):
        local_good = i < 70
        lines.append(json.dumps({
            # Stored as the router read the conversation: each message's text and a newline.
            "ts": 1, "request_id": f"req-{i}", "tenant": "t", "prompt": prompt + "\n", "complexity": 1 - i / 100,
            "complexity_bucket": "x", "local_target": "local/l", "remote_target": "a/b", "judge": "a/b",
            "local_answer": "l", "remote_answer": "r", "votes": ["tie", "tie"] if local_good else ["remote", "remote"],
            "verdict": "tie" if local_good else "remote", "weak_score": 0.5 if local_good else 0.0,
            "strong_score": 0.5 if local_good else 1.0, "cost_usd": 0.001}))
    store = tmp_path / "shadow.jsonl"
    store.write_text("\n".join(lines) + "\n")

    def calibrate(quality):
        return subprocess.run([str(BIN), "calibrate", "--config", "config/gateway.toml", "--from-shadow", str(store),
                               "--target-quality", quality], capture_output=True, text=True, timeout=30)
    out = calibrate("1.0")
    assert out.returncode == 0, out.stderr
    assert "remote: 30 of 100" in out.stdout, out.stdout
    threshold = float(re.search(r"^complexity_threshold = ([0-9.]+)$", out.stdout, re.M).group(1))
    assert live_complexity(prompts[69]) < threshold <= live_complexity(prompts[70]), out.stdout
    assert "remote: 20 of 100" in calibrate("0.9").stdout
    bad = calibrate("1.5")
    assert bad.returncode != 0 and "--target-quality" in bad.stderr
