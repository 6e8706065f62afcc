"""The response cache: deterministic requests answered once upstream, then from the cache
(`x-switchyard-cache: hit`, cost 0, counted), streamed or not; never across tenants; shared by
replicas through Redis with `[cache] shared = true`."""

import re
import uuid

import httpx
import openai

from conftest import (Gateway, accounting_record, fake_requests, new_virtual_key, parse_chunks, remote_only_config,
                      sse_events)

ECHO = '[[rule]]\nname = "echo"\nroute = "fake/echo"\n'


def tenants_section():
    acme, acme_hash = new_virtual_key()
    globex, globex_hash = new_virtual_key()
    section = (f'[[tenants]]\nname = "acme"\nkeys = ["{acme_hash}"]\n\n'
               f'[[tenants]]\nname = "globex"\nkeys = ["{globex_hash}"]\n')
    return acme, globex, section


def upstream_count(fake_provider, text):
    return sum(1 for r in fake_requests(fake_provider) if text in str(r.get("messages")))


def test_deterministic_requests_are_answered_once_and_never_across_tenants(tmp_path, fake_provider):
    acme, globex, tenants = tenants_section()
    gw = Gateway(tmp_path, remote_only_config(fake_provider, tenants + '\n[cache]\nttl_s = 300\nmax_entries = 100\n'), policy=ECHO)
    try:
        text = f"cache me {uuid.uuid4().hex}"
        client = openai.OpenAI(base_url=gw.v1, api_key=acme, max_retries=0)
        ask = lambda c, **kw: c.chat.completions.with_raw_response.create(  # noqa: E731
            model="auto", messages=[{"role": "user", "content": text}], **kw)
        first = ask(client, temperature=0)
        assert first.headers["x-switchyard-cache"] == "miss"
        assert float(first.headers["x-switchyard-cost-usd"]) > 0
        second = ask(client, temperature=0)
        assert second.headers["x-switchyard-cache"] == "hit"
        assert second.headers["x-switchyard-cost-usd"] == "0"
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content == f"echo: {text}"
        assert second.parse().id != first.parse().id, "each answer has its own id"
        assert upstream_count(fake_provider, text) == 1
        record = accounting_record(gw, second.headers["x-request-id"])
        assert record["cache"] == "hit" and float(record["cost_usd"]) == 0 and record["prompt_tokens"] == "0"
        # The same request streamed replays the cached answer as a stream.
        stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": text}], temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {text}"
        assert len({c.id for c in chunks}) == 1 and chunks[0].id not in (first.parse().id, second.parse().id)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        assert upstream_count(fake_provider, text) == 1
        # Another tenant never sees acme's entry.
        other = ask(openai.OpenAI(base_url=gw.v1, api_key=globex, max_retries=0), temperature=0)
        assert other.headers["x-switchyard-cache"] == "miss"
        assert upstream_count(fake_provider, text) == 2
        # Sampled requests are never cached.
        for _ in range(2):
            assert ask(client, temperature=0.7).headers["x-switchyard-cache"] == "miss"
        assert upstream_count(fake_provider, text) == 4
        hits = re.search(r"^switchyard_cache_hits_total (\d+)", httpx.get(f"{gw.base}/metrics").text, re.M)
        assert hits and int(hits.group(1)) == 2
    finally:
        gw.stop()


def test_a_streamed_answer_is_kept_whole_and_served_to_a_plain_request(tmp_path, fake_provider):
    acme, _, tenants = tenants_section()
    gw = Gateway(tmp_path, remote_only_config(fake_provider, tenants + '\n[cache]\n'), policy=ECHO)
    try:
        text = f"stream me {uuid.uuid4().hex}"
        body = {"model": "auto", "seed": 7, "messages": [{"role": "user", "content": text}]}
        headers = {"authorization": f"Bearer {acme}"}
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json={**body, "stream": True}, headers=headers) as r:
            assert r.headers["x-switchyard-cache"] == "miss"
            streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in parse_chunks(sse_events(r)) if c["choices"])
        accounting_record(gw, r.headers["x-request-id"])
        plain = httpx.post(f"{gw.v1}/chat/completions", json=body, headers=headers)
        assert plain.headers["x-switchyard-cache"] == "hit"
        assert plain.json()["choices"][0]["message"]["content"] == streamed == f"echo: {text}"
        assert upstream_count(fake_provider, text) == 1
    finally:
        gw.stop()


def test_a_shared_cache_serves_every_replica(tmp_path, fake_provider, private_redis):
    acme, _, tenants = tenants_section()
    config = remote_only_config(fake_provider, f'{tenants}\n[redis]\nurl = "{private_redis.url}"\n\n[cache]\nshared = true\n')
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a, b = Gateway(a_dir, config, policy=ECHO), Gateway(b_dir, config, policy=ECHO)
    try:
        text = f"share me {uuid.uuid4().hex}"
        body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}]}
        headers = {"authorization": f"Bearer {acme}"}
        first = httpx.post(f"{a.v1}/chat/completions", json=body, headers=headers)
        assert first.headers["x-switchyard-cache"] == "miss"
        # The entry is written to Redis in the background: wait until it is there.
        from conftest import wait_for
        wait_for(lambda: private_redis.cli("KEYS", "switchyard:cache:*"), what="the shared entry")
        second = httpx.post(f"{b.v1}/chat/completions", json=body, headers=headers)
        assert second.headers["x-switchyard-cache"] == "hit"
        assert second.json()["choices"][0]["message"]["content"] == f"echo: {text}"
        assert upstream_count(fake_provider, text) == 1
        ttl = int(private_redis.cli("TTL", private_redis.cli("KEYS", "switchyard:cache:*").split()[0]))
        assert 0 < ttl <= 300
    finally:
        a.stop()
        b.stop()


def test_an_answer_from_a_fallback_is_not_kept(tmp_path, fake_provider):
    # The route always fails (500) and its fallback answers: the next identical request must try
    # the route again, not replay the fallback's answer for ttl_s.
    acme, _, tenants = tenants_section()
    extra = tenants + '\n[cache]\nttl_s = 300\n'
    policy = '[[rule]]\nname = "echo"\nroute = "fake/fail"\nfallback = ["fake/echo"]\n'
    gw = Gateway(tmp_path, remote_only_config(fake_provider, extra), policy=policy)
    try:
        text = f"fallback {uuid.uuid4().hex}"
        body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}]}
        headers = {"authorization": f"Bearer {acme}"}
        for stream in (False, True, False):
            r = httpx.post(f"{gw.v1}/chat/completions", json={**body, "stream": stream}, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            assert (r.headers["x-switchyard-target"], r.headers["x-switchyard-cache"]) == ("fake/echo", "miss")
            r.read()
        answered = [r for r in fake_requests(fake_provider) if text in str(r.get("messages")) and r.get("model") == "echo"]
        assert len(answered) == 3, "the fallback answered each time"
    finally:
        gw.stop()
