"""Tenants share the local engine fairly. One tenant's backlog cannot shut another out: a full
queue gives a place to a tenant holding less of the engine (running and waiting) than another,
whose newest waiting request gets 429 `engine_overloaded` (as it would have, had it come last); a
freed slot goes to the tenant running fewest, not to the oldest request; and spillover predicts a
request's wait from its place in that order."""

import contextlib
import subprocess
import threading
import time

import httpx

from conftest import BIN, Gateway, accounting_records, fake_provider_section, gateway_config, new_virtual_key

LONG = {"model": "auto", "stream": True, "temperature": 0, "max_tokens": 1500,
        "messages": [{"role": "user", "content": "Count from 1 to 1000."}]}
SHORT = {"model": "auto", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}


def two_tenants(first, second, second_extra=""):
    """`[[tenants]]` for two tenants with a key each, and their Authorization headers."""
    first_key, first_entry = new_virtual_key()
    second_key, second_entry = new_virtual_key()
    toml = (f'[[tenants]]\nname = "{first}"\nkeys = ["{first_entry}"]\n\n'
            f'[[tenants]]\nname = "{second}"\nkeys = ["{second_entry}"]\n{second_extra}')
    return toml, {"Authorization": f"Bearer {first_key}"}, {"Authorization": f"Bearer {second_key}"}


def queued(gw):
    return httpx.get(f"{gw.base}/readyz").json()["engine"]["queued"]


def wait_queued(gw, n, answered):
    deadline = time.monotonic() + 60
    while queued(gw) < n:
        assert time.monotonic() < deadline and not answered, f"never {n} queued: {answered}"
        time.sleep(0.01)  # poll interval; the condition ends the wait


def send(gw, answers, name, headers):
    """Sends SHORT as `name` on a thread (returned, started); its answer lands in answers[name]."""
    def post():
        answers[name] = httpx.post(f"{gw.v1}/chat/completions", headers=headers, json=SHORT, timeout=120)
    thread = threading.Thread(target=post)
    thread.start()
    return thread


def queue_up(gw, answers, names, headers):
    """Sends `names` one after another, each once the one before waits in the engine's queue."""
    threads = {}
    for n, name in enumerate(names, start=1):
        threads[name] = send(gw, answers, name, headers)
        wait_queued(gw, n, answers)
    return threads


def served_order(gw, answers, names):
    """The order the named answers were served in, from the accounting log (one slot: each is
    written when its answer ends, before the next starts)."""
    ids = {answers[name].headers["x-request-id"]: name for name in names}
    deadline = time.monotonic() + 10
    while len(order := [ids[r["request_id"]] for r in accounting_records(gw) if r.get("request_id") in ids]) < len(names):
        assert time.monotonic() < deadline, order
        time.sleep(0.01)  # poll interval; the records are written as the answers end
    return order


@contextlib.contextmanager
def holding_the_slot(gw, headers):
    """A long stream of this tenant holds the engine's one slot until the block ends (closing it
    cancels the request)."""
    with httpx.stream("POST", f"{gw.v1}/chat/completions", headers=headers, json=LONG, timeout=120) as running:
        # Keep the iterator: a discarded one is collected at once, closing the connection.
        lines = running.iter_lines()
        next(lines)
        yield


def test_a_tenant_is_not_shut_out_by_another_tenants_backlog(tmp_path, schemas):
    tenants, batch, chat = two_tenants("batch", "chat")
    config = gateway_config(tenants, parallel=1).replace("queue = 16", "queue = 2").replace(
        '[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "FAIR_ADMIN_KEY"')
    gw = Gateway(tmp_path, config, env={"FAIR_ADMIN_KEY": "adm-fair-share"})
    answers = {}
    try:
        with holding_the_slot(gw, batch):
            threads = queue_up(gw, answers, ["batch-1", "batch-2"], batch)
            r = httpx.post(f"{gw.v1}/chat/completions", headers=batch, json=SHORT, timeout=30)
            assert r.status_code == 429 and r.json()["error"]["code"] == "engine_overloaded", "batch holds every place"
            # "chat" holds none: it takes batch's newest place, which is refused as if it came last.
            threads["chat"] = send(gw, answers, "chat", chat)
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
        assert served_order(gw, answers, ["chat", "batch-1"]) == ["chat", "batch-1"]
        # Idle tenants leave the figures.
        assert "switchyard_engine_tenant_queue_depth{" not in httpx.get(f"{gw.base}/metrics").text
    finally:
        gw.stop()


def test_one_place_is_not_kept_by_the_tenant_running_the_one_slot(tmp_path):
    # The tenant running the only slot and waiting in the only place holds more than a tenant
    # holding nothing: the newcomer gets the place (it used to be 429 for everyone else).
    tenants, flood, chat = two_tenants("flood", "chat")
    gw = Gateway(tmp_path, gateway_config(tenants, parallel=1).replace("queue = 16", "queue = 1"))
    answers = {}
    try:
        with holding_the_slot(gw, flood):
            waiting = queue_up(gw, answers, ["flood"], flood)["flood"]
            taker = send(gw, answers, "chat", chat)
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
    tenants, heavy, light = two_tenants("heavy", "light")
    extra = "spill_queue_depth = 1\n\n" + fake_provider_section(fake_provider) + tenants
    gw = Gateway(tmp_path, gateway_config(extra, parallel=1), SPILL_POLICY)
    answers = {}
    try:
        with holding_the_slot(gw, heavy):
            threads = queue_up(gw, answers, ["heavy-1", "heavy-2"], heavy)
            r = httpx.post(f"{gw.v1}/chat/completions", headers=heavy, json=SHORT, timeout=30)
            assert r.status_code == 200 and r.headers.get("x-switchyard-spilled") == "1", (r.status_code, dict(r.headers))
            assert r.headers["x-switchyard-target"] == "fake/echo"
            threads["light"] = send(gw, answers, "light", light)
            wait_queued(gw, 3, answers)
        for name in ("light", "heavy-1", "heavy-2"):
            threads[name].join(timeout=120)
            r = answers[name]
            assert r.status_code == 200, r.text
            assert r.headers["x-switchyard-tier"] == "local" and "x-switchyard-spilled" not in r.headers, (name, dict(r.headers))
    finally:
        gw.stop()


def test_a_tenants_local_weight_is_its_share_of_the_slots(tmp_path):
    # One slot, both tenants' backlogs waiting: "vip" (local_weight = 2) gets two turns for
    # "batch"'s one, and its first before batch's backlog (batch ran the slot last).
    tenants, batch, vip = two_tenants("batch", "vip", "local_weight = 2\n")
    gw = Gateway(tmp_path, gateway_config(tenants, parallel=1))
    answers = {}
    try:
        with holding_the_slot(gw, batch):
            names = ["batch-1", "batch-2", "batch-3"]
            threads = queue_up(gw, answers, names, batch)
            for n, name in enumerate(["vip-1", "vip-2", "vip-3"], start=len(names) + 1):
                threads[name] = send(gw, answers, name, vip)
                wait_queued(gw, n, answers)
        for name, thread in threads.items():
            thread.join(timeout=120)
            assert answers[name].status_code == 200, answers[name].text
        order = served_order(gw, answers, list(threads))
        assert order == ["vip-1", "vip-2", "batch-1", "vip-3", "batch-2", "batch-3"], order
    finally:
        gw.stop()
    # `check` shows it; a weight out of bounds is a configuration error.
    r = subprocess.run([str(BIN), "check", "--config", str(gw.config_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "local_weight 2" in r.stdout, r.stdout + r.stderr
    gw.config_path.write_text(gw.config_path.read_text().replace("local_weight = 2", "local_weight = 0"))
    r = subprocess.run([str(BIN), "check", "--config", str(gw.config_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "local_weight = 0 must be between 1 and 100" in r.stdout + r.stderr, r.stdout + r.stderr
