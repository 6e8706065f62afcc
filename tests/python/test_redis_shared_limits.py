"""Budgets and rate limits shared by several replicas through one Redis (a private redis-server
per test, stopped by pid): exact spend under a race, cluster-wide rate limits, and Redis going
away and coming back under both `on_outage` settings."""

import asyncio
import json
import math
import re
import signal
import threading
import time
import uuid

import httpx
import pytest

from conftest import (Gateway, accounting_record, fake_provider_section, fake_requests, gateway_config, new_virtual_key,
                      remote_only_config, wait_for)

COST = 0.05  # a 40-character prompt with max_tokens 20 on fake/metered (see test_budgets.py)
BUDGET = 1.0
PAID = '[[rule]]\nname = "paid"\nroute = "fake/metered"\n'


def replicas(tmp_path, fake_provider, redis, tenants, n=3, policy=PAID):
    config = remote_only_config(fake_provider, f'{tenants}\n[redis]\nurl = "{redis.url}"\n')
    out = []
    for i in range(n):
        d = tmp_path / f"replica{i}"
        d.mkdir()
        out.append(Gateway(d, config, policy=policy))
    return out


async def fire(urls_and_bodies, key, concurrency=64):
    """Sends every (url, body) at once (bounded concurrency); returns (status, headers, body text)."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(url, body):
            async with limit:
                headers = {"authorization": f"Bearer {key}"}
                if body.get("stream"):
                    async with client.stream("POST", url, json=body, headers=headers) as r:
                        text = "".join([line async for line in r.aiter_lines()])
                        return r.status_code, r.headers, text
                r = await client.post(url, json=body, headers=headers)
                return r.status_code, r.headers, r.text
        return await asyncio.gather(*(one(u, b) for u, b in urls_and_bodies))


def test_spend_race_across_three_replicas_stays_within_one_request_of_the_budget(tmp_path, fake_provider, private_redis):
    key, hashed = new_virtual_key()
    tenants = f'[[tenants]]\nname = "racer"\nkeys = ["{hashed}"]\nbudget = {{ daily_usd = {BUDGET}, on_exceed = "reject" }}\n'
    gws = replicas(tmp_path, fake_provider, private_redis, tenants)
    try:
        run = uuid.uuid4().hex[:8]
        prompt = f"race {run}: count my words, please!!!"  # 40 characters
        assert len(prompt) == 40
        jobs = []
        for i in range(300):
            body = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]}
            if i % 2:
                body.update(stream=True, stream_options={"include_usage": True})
            jobs.append((f"{gws[i % 3].v1}/chat/completions", body))
        results = asyncio.run(fire(jobs, key))
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 429}, sorted(set(statuses))
        for status, headers, text in results:
            if status == 429:
                assert '"budget_exceeded"' in text and int(headers["retry-after"]) >= 1
        # What the upstream actually served (and would bill), from the fake's own records.
        served = [r for r in fake_requests(fake_provider) if prompt in str(r.get("messages"))]
        spend = len(served) * COST
        print(f"spend race: {len(served)} of 300 served, {statuses.count(429)} refused, spend {spend:.2f} of {BUDGET}")
        reservation = COST  # the worst case equals the actual cost here
        assert spend <= BUDGET + reservation + 1e-9, f"overspent: {len(served)} requests served"
        assert spend >= BUDGET - COST - 1e-9, f"budget not usable: only {len(served)} requests served"
        assert statuses.count(200) == len(served)
        # Every reservation settled; Redis holds exactly the spend.
        wait_for(lambda: private_redis.cli("GET", "switchyard:{racer}:reserved") in ("0", ""), what="reservations released")
        assert private_redis.cli("ZCARD", "switchyard:{racer}:leases") == "0"
        day_keys = private_redis.cli("KEYS", "switchyard:{racer}:spend:day:*").split()
        assert len(day_keys) == 1
        assert int(private_redis.cli("GET", day_keys[0])) == round(spend * 1e9)
    finally:
        for gw in gws:
            gw.stop()


def test_rate_limit_across_three_replicas_is_cluster_wide(tmp_path, fake_provider, private_redis):
    key, hashed = new_virtual_key()
    limit = 120
    tenants = f'[[tenants]]\nname = "limited"\nkeys = ["{hashed}"]\nrate_limit = {{ rpm = {limit} }}\n'
    gws = replicas(tmp_path, fake_provider, private_redis, tenants, policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    try:
        jobs = [(f"{gws[i % 3].v1}/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": f"hi {i}"}]})
                for i in range(2 * limit)]
        started = time.monotonic()
        results = asyncio.run(fire(jobs, key))
        elapsed = time.monotonic() - started
        accepted = sum(1 for s, _, _ in results if s == 200)
        # The burst is spread over 3 replicas but counted once; GCRA refills limit/60 a second,
        # so only what refilled while the burst ran may pass beyond the limit.
        refilled = math.ceil(limit * elapsed / 60)
        print(f"rate limit {limit}/min across 3 replicas: {accepted} of {len(jobs)} accepted in {elapsed:.2f} s")
        assert limit <= accepted <= limit + refilled + 1, f"{accepted} accepted for a limit of {limit} in {elapsed:.1f} s"
        for status, headers, text in results:
            assert headers["x-ratelimit-limit-requests"] == str(limit)
            if status == 429:
                assert '"rate_limit_exceeded"' in text and int(headers["retry-after"]) >= 1
    finally:
        for gw in gws:
            gw.stop()


def outage_gateway(tmp_path, fake_provider, redis, on_outage):
    policy = ('[[rule]]\nname = "home"\nwhen.privacy = ["confidential"]\nroute = "local"\n\n'
              '[[rule]]\nname = "out"\nroute = "fake/echo"\n')
    tenants = '[[tenants]]\nname = "default"\nbudget = { daily_usd = 100.0 }\n'
    extra = f'{fake_provider_section(fake_provider)}\n{tenants}\n[redis]\nurl = "{redis.url}"\non_outage = "{on_outage}"\ntimeout_ms = 200\n'
    return Gateway(tmp_path, gateway_config(extra), policy=policy)


def spend_in_redis(redis):
    keys = redis.cli("KEYS", "switchyard:{default}:spend:day:*").split()
    return keys and int(redis.cli("GET", keys[0])) > 0


def chat(gw, confidential=False):
    headers = {"x-switchyard-tags": "confidential"} if confidential else {}
    return httpx.post(f"{gw.v1}/chat/completions", headers=headers, timeout=60,
                      json={"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]})


def test_fail_closed_refuses_remote_keeps_local_and_recovers(tmp_path, fake_provider, private_redis):
    gw = outage_gateway(tmp_path, fake_provider, private_redis, "fail_closed")
    try:
        assert chat(gw).status_code == 200
        wait_for(lambda: spend_in_redis(private_redis), what="the spend settled in Redis")
        private_redis.stop()
        refused = chat(gw)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "limits_store_unavailable"
        assert "unreachable" in refused.json()["error"]["message"]
        local = chat(gw, confidential=True)
        assert local.status_code == 200 and local.headers["x-switchyard-tier"] == "local"
        private_redis.start()  # empty, on the same port
        wait_for(lambda: chat(gw).status_code == 200, timeout=15, what="recovery once Redis is back")
        wait_for(lambda: spend_in_redis(private_redis), what="spend settled in the restarted Redis")
        assert gw.process.proc.poll() is None
    finally:
        gw.stop()


def test_fail_open_falls_back_to_local_limits_and_returns_to_redis(tmp_path, fake_provider, private_redis):
    gw = outage_gateway(tmp_path, fake_provider, private_redis, "fail_open")
    try:
        assert chat(gw).status_code == 200
        private_redis.stop()
        during = chat(gw)
        assert during.status_code == 200
        accounting_record(gw, during.headers["x-request-id"])
        metrics = httpx.get(f"{gw.base}/metrics").text
        counted = re.search(r'switchyard_store_unavailable_total\{action="fail_open"\} (\d+)', metrics)
        assert counted and int(counted.group(1)) >= 1
        assert any("on_outage = fail_open" in line for line in gw.process.lines)
        private_redis.start()
        wait_for(lambda: chat(gw).status_code == 200 and spend_in_redis(private_redis), timeout=15, what="budgets back in Redis")
    finally:
        gw.stop()


def test_admin_stats_are_cluster_wide_with_redis(tmp_path, fake_provider, private_redis):
    gws = replicas(tmp_path, fake_provider, private_redis, "", n=2, policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    try:
        sent = [3, 2]
        for gw, n in zip(gws, sent):
            for i in range(n):
                assert httpx.post(f"{gw.v1}/chat/completions",
                                  json={"model": "auto", "messages": [{"role": "user", "content": f"hi {i}"}]}).status_code == 200
        # Each replica publishes its minutes every 5 s; either one then shows both.
        for gw in gws:
            stats = wait_for(lambda: (lambda s: s if s["hour"]["total"]["requests"] == sum(sent) and len(s["replicas"]) == 2 else None)(
                httpx.get(f"{gw.base}/admin/stats").json()), timeout=15, what="cluster-wide figures")
            assert stats["scope"] == "cluster"
            assert stats["hour"]["targets"]["fake/echo"]["requests"] == sum(sent)
            assert {r["id"] for r in stats["replicas"]} >= {stats["replica"]}
        # Redis loses everything (as a restart without persistence does): each replica notices
        # at its next publish and sends its whole day again, so both views recover in full.
        private_redis.cli("FLUSHALL")
        for gw in gws:
            wait_for(lambda: (lambda s: s if s["hour"]["total"]["requests"] == sum(sent) and len(s["replicas"]) == 2 else None)(
                httpx.get(f"{gw.base}/admin/stats").json()), timeout=15, what="cluster-wide figures after Redis lost them")
    finally:
        for gw in gws:
            gw.stop()


def test_a_stopping_replica_publishes_its_last_figures_to_the_cluster_view(tmp_path, fake_provider, private_redis):
    # Requests answered in a replica's last seconds (its refresher publishes every 5 s) still
    # reach the cluster view: the replica publishes once more as it stops.
    gws = replicas(tmp_path, fake_provider, private_redis, "", n=2, policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    try:
        stopping, staying = gws
        for i in range(4):
            assert httpx.post(f"{stopping.v1}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": f"hi {i}"}]}).status_code == 200
        stopping.process.proc.send_signal(signal.SIGTERM)
        assert stopping.process.proc.wait(timeout=60) == 0
        stats = wait_for(lambda: (lambda s: s if s["hour"]["total"]["requests"] >= 4 else None)(httpx.get(f"{staying.base}/admin/stats").json()),
                         timeout=15, what="the stopped replica's requests in the cluster view")
        assert stats["hour"]["total"]["requests"] == 4, stats["hour"]["total"]
    finally:
        for gw in gws:
            gw.stop()


def test_a_stopping_replica_settles_its_last_requests_in_redis(tmp_path, fake_provider, private_redis):
    # The URL (which may carry a password) comes from the environment, not the file.
    config = remote_only_config(fake_provider, '[[tenants]]\nname = "default"\nbudget = { daily_usd = 1.0 }\n'
                                '\n[redis]\nurl_env = "SY_TEST_REDIS_URL"\n')
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "gated"\nroute = "fake/gated"\n', env={"SY_TEST_REDIS_URL": private_redis.url})
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=60, json={
                "model": "auto", "stream": True, "max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            lines = r.iter_lines()
            for line in lines:
                if "first" in line:
                    break
            assert int(private_redis.cli("GET", "switchyard:{default}:reserved")) > 0
            gw.process.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(f"{gw.base}/readyz").status_code == 503, what="the drain to start")
            httpx.post(f"{fake_provider}/control/release")
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]", rest
        assert gw.process.proc.wait(timeout=60) == 0
        record = accounting_record(gw, request_id)
        # Settled before the process went: the spend is in Redis and nothing stays reserved.
        assert int(private_redis.cli("GET", "switchyard:{default}:reserved") or 0) == 0
        day_keys = private_redis.cli("--scan", "--pattern", "switchyard:{default}:spend:day:*").split()
        assert len(day_keys) == 1, day_keys
        assert int(private_redis.cli("GET", day_keys[0])) == round(float(record["cost_usd"]) * 1e9) > 0
    finally:
        gw.stop()


def test_a_request_the_drain_deadline_cuts_is_recorded_and_settled(tmp_path, fake_provider, private_redis):
    # An answer that starts 45 s late outlives the 30 s drain: the stop cuts it, and its record
    # (a 503: the server's doing) reaches the audit log and its reservation leaves Redis before
    # the process exits, rather than lapsing with its lease minutes later.
    audit = tmp_path / "audit.jsonl"
    config = remote_only_config(fake_provider, '[[tenants]]\nname = "default"\nbudget = { daily_usd = 1.0 }\n'
                                f'\n[redis]\nurl = "{private_redis.url}"\n\n[audit]\npath = "{audit}"\n').replace("timeout_ms = 20000", "timeout_ms = 90000")
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "slow"\nroute = "fake/echo"\n')
    try:
        httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"slow_ms": 45000}]}).raise_for_status()
        outcome = {}

        def ask():
            try:
                outcome["response"] = httpx.post(f"{gw.v1}/chat/completions", timeout=90, json={
                    "model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "late"}]})
            except httpx.HTTPError as e:
                outcome["error"] = e

        client = threading.Thread(target=ask)
        client.start()
        wait_for(lambda: int(private_redis.cli("GET", "switchyard:{default}:reserved") or 0) > 0, what="the reservation")
        gw.process.proc.send_signal(signal.SIGTERM)
        assert gw.process.proc.wait(timeout=90) == 0
        client.join(timeout=30)
        # Cut, it gets a last word rather than a broken connection: 503, retry elsewhere.
        assert "response" in outcome, outcome
        assert outcome["response"].status_code == 503 and outcome["response"].json()["error"]["code"] == "shutting_down", outcome
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [r["status"] for r in records] == [503], records
        # The provider had the prompt: billed on its estimate, as for a client that leaves.
        assert records[0]["target"] == "fake/echo" and records[0]["prompt_tokens"] > 0 and records[0]["cost_estimated"] is True, records
        assert int(private_redis.cli("GET", "switchyard:{default}:reserved") or 0) == 0
    finally:
        gw.stop()
