"""Tenant budgets with the in-process store: worst-case reservation before dispatch, settlement
to the actual cost after it (also when the client goes away or the upstream fails), `on_exceed`
reject and local, and `when.budget_used_over` as a routing signal.

The fake's `metered` model answers exactly `max_tokens` tokens and reports the prompt the way the
gateway estimates it, at 1000 $/Mtok in and 2000 $/Mtok out: a 40-character prompt (10 tokens)
with max_tokens 20 costs exactly 0.01 + 0.04 = 0.05 USD, reserved and settled alike."""

import datetime
import re

import httpx
import openai
import pytest

from conftest import Gateway, accounting_record, admin_stats, fake_provider_section, gateway_config, wait_for

COST = 0.05
PROMPT = "Please count these words for me, thanks."  # 40 characters: 10 tokens
assert len(PROMPT) == 40
PAID = '[[rule]]\nname = "paid"\nroute = "fake/metered"\n'


def budget_gateway(tmp_path, fake_provider, budget, policy=PAID, extra=""):
    tenants = f'[[tenants]]\nname = "default"\nbudget = {budget}\n'
    return Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider) + tenants + extra), policy=policy)


def ask(gw, **kw):
    client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": PROMPT}], max_tokens=20, **kw)


def budget_of(gw):
    return admin_stats(gw)["budgets"]["default"]


def settled(gw, spent):
    """Waits until every reservation is settled and the day's spend is `spent`."""
    return wait_for(lambda: (lambda b: b if b["reserved_usd"] == 0 and abs(b["spent_today_usd"] - spent) < 1e-9 else None)(budget_of(gw)),
                    what=f"spend {spent} settled")


def seconds_to_utc_midnight():
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_reject_answers_429_budget_exceeded_until_the_day_ends(tmp_path, fake_provider):
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.12, on_exceed = "reject" }')
    try:
        for i in (1, 2):
            raw = ask(gw)
            assert raw.http_response.status_code == 200
            assert float(raw.headers["x-switchyard-cost-usd"]) == pytest.approx(COST, abs=1e-12)
            settled(gw, COST * i)
        with pytest.raises(openai.RateLimitError) as refused:
            ask(gw)
        body = refused.value.response.json()["error"]
        assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota", body
        retry_after = int(refused.value.response.headers["retry-after"])
        assert abs(retry_after - seconds_to_utc_midnight()) < 5, "the daily budget comes back at 00:00 UTC"
        # `/v1/route` says so too, without reserving anything.
        route = httpx.post(f"{gw.v1}/route", json={"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": PROMPT}]}).json()
        assert route["budget_exceeded"] is True and route["target"] == "fake/metered", route
        assert any("budget_exceeded" in r for r in route["reasons"]), route["reasons"]
        b = budget_of(gw)
        assert b["spent_today_usd"] == pytest.approx(2 * COST, abs=1e-12) and b["reserved_usd"] == 0
        assert b["used_share"] == pytest.approx(2 * COST / 0.12)
        metrics = httpx.get(f"{gw.base}/metrics").text
        left = re.search(r'switchyard_budget_remaining_usd\{period="daily",tenant="default"\} (\S+)', metrics)
        assert left and float(left.group(1)) == pytest.approx(0.12 - 2 * COST)
        # The refusal is accounted too, at no cost.
        record = accounting_record(gw, refused.value.response.headers["x-request-id"])
        assert record["status"] == "429" and float(record["cost_usd"]) == 0
        assert record["rule"] == "paid", "a refusal counts under the rule that routed it"
        assert re.search(r'switchyard_requests_total\{[^}]*rule="paid"[^}]*status="429"[^}]*\} 1', httpx.get(f"{gw.base}/metrics").text)
    finally:
        gw.stop()


def test_local_on_exceed_reroutes_to_the_local_engine(tmp_path, fake_provider):
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.06, on_exceed = "local" }')
    try:
        first = ask(gw)
        assert first.headers["x-switchyard-target"] == "fake/metered"
        assert "x-switchyard-rerouted" not in first.headers
        settled(gw, COST)
        route = httpx.post(f"{gw.v1}/route", json={"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": PROMPT}]}).json()
        assert (route["budget_exceeded"], route["target"], route["rerouted"]) == (True, "local/local-small", True), route
        second = ask(gw)
        assert second.http_response.status_code == 200
        assert second.headers["x-switchyard-target"] == "local/local-small"
        assert second.headers["x-switchyard-tier"] == "local"
        assert second.headers["x-switchyard-rerouted"] == "1"
        assert second.parse().choices[0].message.content
        # The local answer draws nothing ([local].cost_per_mtok is 0).
        settled(gw, COST)
    finally:
        gw.stop()


def test_a_request_dearer_than_the_whole_budget_is_told_no_wait_helps(tmp_path, fake_provider):
    # Its worst case (max_tokens 60: 0.01 + 0.12 USD) is more than the whole day's 0.12: a
    # Retry-After of hours would only bring the same refusal (and SDKs would wait for it).
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.12, on_exceed = "reject" }')
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PROMPT}], max_tokens=60)
        response = refused.value.response
        body = response.json()["error"]
        assert (body["code"], body["type"]) == ("budget_exceeded", "insufficient_quota"), body
        assert "retry-after" not in response.headers, dict(response.headers)
        assert "($0.13 " in body["message"] and "whole daily budget ($0.12)" in body["message"], body
        assert "no wait makes it fit" in body["message"] and "max_tokens" in body["message"], body
        # One that fits the day is served, and nothing stays reserved.
        assert ask(gw).http_response.status_code == 200
        settled(gw, COST)
    finally:
        gw.stop()


def test_an_over_budget_request_the_local_engine_cannot_hold_is_budget_exceeded(tmp_path, fake_provider):
    # 2000 completion tokens: over the budget's worst case ($4.01 > $0.06) and over the local
    # engine's 1024-cell slot, so on_exceed = "local" cannot serve it either.
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.06, on_exceed = "local" }')
    try:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PROMPT}], max_tokens=2000)
        body = refused.value.response.json()["error"]
        assert body["code"] == "budget_exceeded", body
        # More than the whole day's budget: no wait makes it fit.
        assert "retry-after" not in refused.value.response.headers and "no wait makes it fit" in body["message"], body
        assert ask(gw).headers["x-switchyard-target"] == "fake/metered", "a request the budget holds still goes out"
    finally:
        gw.stop()


def test_an_over_budget_tenant_that_may_not_use_the_local_engine_is_refused_and_route_says_so(tmp_path, fake_provider):
    tenants = '[[tenants]]\nname = "default"\nmodels = ["fake/*"]\nbudget = { daily_usd = 0.06, on_exceed = "local" }\n'
    gw = Gateway(tmp_path, gateway_config(fake_provider_section(fake_provider) + tenants), policy=PAID)
    try:
        assert ask(gw).headers["x-switchyard-target"] == "fake/metered"
        settled(gw, COST)
        with pytest.raises(openai.RateLimitError) as refused:
            ask(gw)
        assert refused.value.response.json()["error"]["code"] == "budget_exceeded"
        route = httpx.post(f"{gw.v1}/route", json={"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": PROMPT}]}).json()
        assert route["budget_exceeded"] is True and route["target"] != "local/local-small", route
        assert any("refused (429 budget_exceeded, no local target can serve it)" in r for r in route["reasons"]), route["reasons"]
    finally:
        gw.stop()


def test_budget_used_over_keeps_traffic_local_as_money_runs_low(tmp_path, fake_provider):
    policy = ('[[rule]]\nname = "thrifty"\nwhen.budget_used_over = 0.5\nroute = "local"\n\n' + PAID)
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.15 }', policy=policy)
    try:
        rules = []
        for spent_after in (COST, 2 * COST, 2 * COST):
            raw = ask(gw)
            rules.append(raw.headers["x-switchyard-rule"])
            settled(gw, spent_after)
        # 0 % and 33 % used: paid; 67 % used: the thrifty rule takes over.
        assert rules == ["paid", "paid", "thrifty"]
        route = httpx.post(f"{gw.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}).json()
        assert route["rule"] == "thrifty"
        assert any("budget used > 50%" in r for r in route["reasons"]), route["reasons"]
    finally:
        gw.stop()


def test_a_cached_answer_is_not_replayed_once_the_budget_routes_elsewhere(tmp_path, fake_provider):
    """A hit is served only from a target the request's current decision may use: once the
    thrifty rule takes over, the paid route's cached answer is not replayed under its name."""
    policy = '[[rule]]\nname = "thrifty"\nwhen.budget_used_over = 0.5\nroute = "fake/echo"\n\n' + PAID
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 0.15 }', policy=policy, extra='[cache]\nttl_s = 300\n')
    try:
        seen = []
        for seed, spent_after in ((0, COST), (0, COST), (1, 2 * COST), (0, None), (0, None)):
            raw = ask(gw, temperature=0, seed=seed)
            seen.append((raw.headers["x-switchyard-rule"], raw.headers["x-switchyard-target"], raw.headers["x-switchyard-cache"]))
            if spent_after is not None:
                settled(gw, spent_after)
        # A miss then a hit at 0 % and 33 % used; at 67 % the thrifty rule takes over, and seed 0's
        # cached answer from the paid route is not replayed: asked again, then kept for the next.
        assert seen == [("paid", "fake/metered", "miss"), ("paid", "fake/metered", "hit"), ("paid", "fake/metered", "miss"),
                        ("thrifty", "fake/echo", "miss"), ("thrifty", "fake/echo", "hit")], seen
    finally:
        gw.stop()


def test_disconnects_and_upstream_failures_release_their_reservation(tmp_path, fake_provider):
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 1.0 }', policy='[[rule]]\nname = "gated"\nroute = "fake/gated"\n')
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=30, json={
                "model": "auto", "stream": True, "max_tokens": 1000,
                "messages": [{"role": "user", "content": PROMPT}]}) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            for line in r.iter_lines():
                if '"first"' in line:
                    break  # the client goes away mid-stream
        record = accounting_record(gw, request_id)
        assert record["cost_estimated"] == "true" and float(record["cost_usd"]) > 0
        b = wait_for(lambda: (lambda b: b if b["reserved_usd"] == 0 and b["spent_today_usd"] > 0 else None)(budget_of(gw)),
                     what="the cut stream settled")
        assert b["spent_today_usd"] == pytest.approx(float(record["cost_usd"]), abs=1e-9)
        spent = b["spent_today_usd"]
        # An upstream failure: the reservation goes back and nothing is spent.
        failed = httpx.post(f"{gw.v1}/chat/completions", json={
            "model": "fake/fail", "max_tokens": 1000, "messages": [{"role": "user", "content": PROMPT}]})
        assert failed.status_code == 502
        accounting_record(gw, failed.headers["x-request-id"])
        settled(gw, spent)
    finally:
        gw.stop()


def test_a_stream_the_upstream_cuts_settles_its_estimate(tmp_path, fake_provider):
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 1.0 }', policy='[[rule]]\nname = "cut"\nroute = "fake/drop"\n')
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=30, json={
                "model": "auto", "stream": True, "max_tokens": 1000,
                "messages": [{"role": "user", "content": PROMPT}]}) as r:
            request_id = r.headers["x-request-id"]
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if '"partial"' in line:
                        httpx.post(f"{fake_provider}/control/release")
        assert events[-1] == "[DONE]" and '"error"' in events[-2]
        record = accounting_record(gw, request_id)
        b = wait_for(lambda: (lambda b: b if b["reserved_usd"] == 0 and b["spent_today_usd"] > 0 else None)(budget_of(gw)),
                     what="the cut stream settled")
        assert b["spent_today_usd"] == pytest.approx(float(record["cost_usd"]), abs=1e-9)
    finally:
        gw.stop()


def test_priced_local_answers_draw_on_the_budget(tmp_path, fake_provider):
    config = gateway_config(fake_provider_section(fake_provider) + '[[tenants]]\nname = "default"\nbudget = { daily_usd = 1.0 }\n')
    config = config.replace("queue = 16\n", "queue = 16\ncost_per_mtok = 1000.0\n", 1)
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "home"\nroute = "local"\n')
    try:
        raw = ask(gw)
        assert raw.headers["x-switchyard-tier"] == "local"
        cost = float(raw.headers["x-switchyard-cost-usd"])
        assert cost > 0
        settled(gw, cost)
    finally:
        gw.stop()


def test_an_absurd_worst_case_is_refused_not_wrapped_around(tmp_path, fake_provider):
    # n × max_tokens this large once saturated the reservation at 2^64 - 1 nano-USD, which then
    # wrapped the budget's sum around and let the request through.
    gw = budget_gateway(tmp_path, fake_provider, '{ daily_usd = 1.0, on_exceed = "reject" }')
    try:
        for n, max_tokens in [(4294967295, 2147484), (4294967295, 4294967295)]:
            r = httpx.post(f"{gw.v1}/chat/completions", timeout=30,
                           json={"model": "auto", "n": n, "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}]})
            assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
        assert budget_of(gw)["reserved_usd"] == 0
    finally:
        gw.stop()
