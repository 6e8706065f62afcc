"""Tenants share the local engine fairly. One tenant's backlog cannot shut another out: a full
queue gives a place to a tenant holding fewer places than another, whose newest request gets 429
`engine_overloaded` (as it would have, had it come last), and a freed slot goes to the tenant
running fewest, not to the oldest request."""

import threading
import time

import httpx

from conftest import Gateway, accounting_records, fake_provider_section, gateway_config, new_virtual_key

LONG = {"model": "auto", "stream": True, "temperature": 0, "max_tokens": 1500,
        "messages": [{"role": "user", "content": "Count from 1 to 1000."}]}
SHORT = {"model": "auto", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}


def queued(gw):
    return httpx.get(f"{gw.base}/readyz").json()["engine"]["queued"]


def wait_queued(gw, n, answered):
    deadline = time.monotonic() + 60
    while queued(gw) < n:
        assert time.monotonic() < deadline and not answered, f"never {n} queued: {answered}"
        time.sleep(0.01)  # poll interval; the condition ends the wait


def test_a_tenant_is_not_shut_out_by_another_tenants_backlog(tmp_path, schemas):
    batch_key, batch_entry = new_virtual_key()
    chat_key, chat_entry = new_virtual_key()
    tenants = f'[[tenants]]\nname = "batch"\nkeys = ["{batch_entry}"]\n\n[[tenants]]\nname = "chat"\nkeys = ["{chat_entry}"]\n'
    config = gateway_config(tenants, parallel=1).replace("queue = 16", "queue = 2").replace(
        '[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "FAIR_ADMIN_KEY"')
    gw = Gateway(tmp_path, config, env={"FAIR_ADMIN_KEY": "adm-fair-share"})
    batch = {"Authorization": f"Bearer {batch_key}"}
    chat = {"Authorization": f"Bearer {chat_key}"}
    answers = {}

    def send(name, headers):
        r = httpx.post(f"{gw.v1}/chat/completions", headers=headers, json=SHORT, timeout=120)
        answers[name] = r

    threads = {}
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", headers=batch, json=LONG, timeout=120) as running:
            # The only slot is busy (keep the iterator: closing it cancels the request).
            lines = running.iter_lines()
            next(lines)
            for n, name in enumerate(["batch-1", "batch-2"], start=1):
                threads[name] = threading.Thread(target=send, args=(name, batch))
                threads[name].start()
                wait_queued(gw, n, answers)
            r = httpx.post(f"{gw.v1}/chat/completions", headers=batch, json=SHORT, timeout=30)
            assert r.status_code == 429 and r.json()["error"]["code"] == "engine_overloaded", "batch holds every place"
            # "chat" holds none: it takes batch's newest place, which is refused as if it came last.
            threads["chat"] = threading.Thread(target=send, args=("chat", chat))
            threads["chat"].start()
            threads["batch-2"].join(timeout=60)
            displaced = answers["batch-2"]
            assert displaced.status_code == 429, displaced.text
            schemas.validate("ErrorResponse", displaced.json())
            assert displaced.json()["error"]["code"] == "engine_overloaded" and displaced.headers["retry-after"]
            assert "gave its place" in displaced.json()["error"]["message"], "told apart from a full queue's refusal"
            assert "chat" not in answers, f"chat should wait for the slot: {answers['chat'].text}"
            assert queued(gw) == 2
            engine = httpx.get(f"{gw.base}/readyz").json()["engine"]
            assert engine["displaced_total"] == 1, engine
            # Who holds the engine, for operators: batch runs the slot and waits in one place, chat in the other.
            stats = httpx.get(f"{gw.base}/admin/stats", headers={"Authorization": "Bearer adm-fair-share"}).json()["engine"]
            assert stats["tenants"] == {"batch": {"running": 1, "waiting": 1}, "chat": {"running": 0, "waiting": 1}}, stats
            assert stats["displaced_total"] == 1
            metrics = httpx.get(f"{gw.base}/metrics").text
            for line in ['switchyard_engine_tenant_queue_depth{tenant="batch"} 1', 'switchyard_engine_tenant_queue_depth{tenant="chat"} 1',
                         'switchyard_engine_tenant_active_sequences{tenant="batch"} 1', 'switchyard_engine_tenant_active_sequences{tenant="chat"} 0']:
                assert line in metrics.splitlines(), line
        # The stream is closed: its slot goes to "chat", which runs none, before batch's older request.
        for name in ("chat", "batch-1"):
            threads[name].join(timeout=120)
            assert answers[name].status_code == 200, answers[name].text
        ids = {answers[name].headers["x-request-id"]: name for name in ("chat", "batch-1")}
        deadline = time.monotonic() + 10
        while len(order := [ids[r["request_id"]] for r in accounting_records(gw) if r.get("request_id") in ids]) < 2:
            assert time.monotonic() < deadline, order
            time.sleep(0.01)  # poll interval; the records are written as the answers end
        assert order == ["chat", "batch-1"], "one slot: the order the two were served in"
        # Idle tenants leave the figures.
        assert "switchyard_engine_tenant_queue_depth{" not in httpx.get(f"{gw.base}/metrics").text
    finally:
        gw.stop()


def test_one_place_is_not_kept_by_the_tenant_running_the_one_slot(tmp_path):
    # The tenant running the only slot and waiting in the only place holds more than a tenant
    # holding nothing: the newcomer gets the place (it used to be 429 for everyone else).
    flood_key, flood_entry = new_virtual_key()
    chat_key, chat_entry = new_virtual_key()
    tenants = f'[[tenants]]\nname = "flood"\nkeys = ["{flood_entry}"]\n\n[[tenants]]\nname = "chat"\nkeys = ["{chat_entry}"]\n'
    gw = Gateway(tmp_path, gateway_config(tenants, parallel=1).replace("queue = 16", "queue = 1"))
    flood = {"Authorization": f"Bearer {flood_key}"}
    chat = {"Authorization": f"Bearer {chat_key}"}
    answers = {}

    def send(name, headers):
        answers[name] = httpx.post(f"{gw.v1}/chat/completions", headers=headers, json=SHORT, timeout=120)

    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", headers=flood, json=LONG, timeout=120) as running:
            lines = running.iter_lines()
            next(lines)
            waiting = threading.Thread(target=send, args=("flood", flood))
            waiting.start()
            wait_queued(gw, 1, answers)
            taker = threading.Thread(target=send, args=("chat", chat))
            taker.start()
            waiting.join(timeout=60)
            assert answers["flood"].status_code == 429, answers["flood"].text
            assert answers["flood"].json()["error"]["code"] == "engine_overloaded"
            # Each now holds one: flood cannot take the place back.
            r = httpx.post(f"{gw.v1}/chat/completions", headers=flood, json=SHORT, timeout=30)
            assert r.status_code == 429 and r.json()["error"]["code"] == "engine_overloaded", r.text
            assert "chat" not in answers and queued(gw) == 1
        taker.join(timeout=120)
        assert answers["chat"].status_code == 200, answers["chat"].text
    finally:
        gw.stop()


SPILL_POLICY = '[[rule]]\nname = "default"\nroute = "local"\nspill = "fake/echo"\n'


def test_a_tenant_behind_another_tenants_backlog_is_not_spilled(tmp_path, fake_provider):
    # Spill while more than one request waits ahead: the backlog's own third request spills, but
    # another tenant waits behind only one of the backlog's (the slots go to it first) and stays local.
    heavy_key, heavy_entry = new_virtual_key()
    light_key, light_entry = new_virtual_key()
    tenants = f'[[tenants]]\nname = "heavy"\nkeys = ["{heavy_entry}"]\n\n[[tenants]]\nname = "light"\nkeys = ["{light_entry}"]\n'
    extra = "spill_queue_depth = 1\n\n" + fake_provider_section(fake_provider) + tenants
    gw = Gateway(tmp_path, gateway_config(extra, parallel=1), SPILL_POLICY)
    heavy = {"Authorization": f"Bearer {heavy_key}"}
    light = {"Authorization": f"Bearer {light_key}"}
    answers = {}

    def send(name, headers):
        answers[name] = httpx.post(f"{gw.v1}/chat/completions", headers=headers, json=SHORT, timeout=120)

    threads = {}
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", headers=heavy, json=LONG, timeout=120) as running:
            lines = running.iter_lines()
            next(lines)
            for n, name in enumerate(["heavy-1", "heavy-2"], start=1):
                threads[name] = threading.Thread(target=send, args=(name, heavy))
                threads[name].start()
                wait_queued(gw, n, answers)
            r = httpx.post(f"{gw.v1}/chat/completions", headers=heavy, json=SHORT, timeout=30)
            assert r.status_code == 200 and r.headers.get("x-switchyard-spilled") == "1", (r.status_code, dict(r.headers))
            assert r.headers["x-switchyard-target"] == "fake/echo"
            threads["light"] = threading.Thread(target=send, args=("light", light))
            threads["light"].start()
            wait_queued(gw, 3, answers)
        for name in ("light", "heavy-1", "heavy-2"):
            threads[name].join(timeout=120)
            r = answers[name]
            assert r.status_code == 200, r.text
            assert r.headers["x-switchyard-tier"] == "local" and "x-switchyard-spilled" not in r.headers, (name, dict(r.headers))
    finally:
        gw.stop()
