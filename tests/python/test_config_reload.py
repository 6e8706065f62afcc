"""Configuration reload (SIGHUP or POST /admin/reload): keys, tenants, limits and the policy
change without a restart; a file with problems, or one that changes a section only a restart
applies, changes nothing and says why."""

import os
import re
import signal

import httpx

from conftest import Gateway, new_virtual_key, remote_only_config, wait_for

ECHO = '[[rule]]\nname = "default"\nroute = "fake/echo"\n'


def tenant(name, key_entry, extra=""):
    return f'[[tenants]]\nname = "{name}"\nkeys = ["{key_entry}"]\n{extra}\n'


def started(tmp_path, fake_provider):
    """A gateway whose one tenant, acme, has an old key; and a new key, not configured yet."""
    old_key, old_entry = new_virtual_key()
    new_key, new_entry = new_virtual_key()
    gw = Gateway(tmp_path, remote_only_config(fake_provider, tenant("acme", old_entry)), policy=ECHO)
    return gw, old_key, new_key, new_entry


def rewrite(gw, tmp_path, fake, tenants, policy=None, server=""):
    """Writes the gateway's configuration file (and policy) anew, as an operator would."""
    if policy is not None:
        (tmp_path / "policy.toml").write_text(policy)
    config = remote_only_config(fake, tenants).replace('region = "eu-west"\n', f'region = "eu-west"\n{server}', 1)
    gw.config_path.write_text(config.replace("{policy}", str(tmp_path / "policy.toml")))


def models_status(gw, key):
    return httpx.get(f"{gw.v1}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def metric(gw, line_start):
    m = re.search(rf"^{re.escape(line_start)} (\d+)", httpx.get(f"{gw.base}/metrics", timeout=10).text, re.M)
    return int(m.group(1)) if m else None


def test_post_reload_revokes_a_key_and_admits_a_new_tenant(tmp_path, fake_provider):
    gw, old_key, new_key, new_entry = started(tmp_path, fake_provider)
    try:
        assert models_status(gw, old_key) == 200
        assert models_status(gw, new_key) == 401
        pid = gw.process.proc.pid
        rewrite(gw, tmp_path, fake_provider, tenant("beta", new_entry))
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["reloaded"], body["tenants"], body["rules"]) == (True, 1, 1), body
        # What `check` warns about comes back (this file leaves the admin pages open).
        assert any("admin_key_env" in w for w in body["warnings"]), body
        assert models_status(gw, old_key) == 401
        assert models_status(gw, new_key) == 200
        chat = httpx.post(f"{gw.v1}/chat/completions", headers={"Authorization": f"Bearer {new_key}"},
                          json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert chat.status_code == 200, chat.text
        assert gw.process.proc.pid == pid and gw.process.proc.poll() is None, "served by the same process"
        assert metric(gw, 'switchyard_config_reloads_total{result="applied"}') == 1
        assert any("configuration reloaded" in line for line in gw.process.lines)
    finally:
        gw.stop()


def test_sighup_reloads_the_configuration(tmp_path, fake_provider):
    gw, old_key, new_key, new_entry = started(tmp_path, fake_provider)
    try:
        rewrite(gw, tmp_path, fake_provider, tenant("acme", new_entry))
        os.kill(gw.process.proc.pid, signal.SIGHUP)
        wait_for(lambda: metric(gw, 'switchyard_config_reloads_total{result="applied"}') == 1, timeout=30, what="the reload")
        assert models_status(gw, new_key) == 200
        assert models_status(gw, old_key) == 401
        assert gw.process.proc.poll() is None and httpx.get(f"{gw.base}/readyz").status_code == 200
    finally:
        gw.stop()


def test_a_file_with_problems_changes_nothing_until_it_is_fixed(tmp_path, fake_provider):
    gw, old_key, new_key, new_entry = started(tmp_path, fake_provider)
    try:
        # A plain key where its hash belongs, beside a valid new tenant: nothing of it applies.
        rewrite(gw, tmp_path, fake_provider, tenant("acme", "sy-plain-key-pasted") + tenant("beta", new_entry))
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "reload_refused" and error["type"] == "invalid_request_error"
        assert "gateway.toml" in error["message"] and "keys[0]" in error["message"], error["message"]
        assert "sy-plain-key-pasted" not in error["message"], "a key is never echoed"
        assert models_status(gw, old_key) == 200 and models_status(gw, new_key) == 401
        assert metric(gw, "switchyard_config_last_reload_successful") == 0
        assert metric(gw, 'switchyard_config_reloads_total{result="refused"}') == 1
        # A policy that does not parse is refused the same way.
        rewrite(gw, tmp_path, fake_provider, tenant("beta", new_entry), policy='[[rule]]\nname = "x"\nroute = \n')
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 422 and "policy.toml" in r.json()["error"]["message"], r.text
        assert models_status(gw, old_key) == 200
        # Fixed: applied.
        rewrite(gw, tmp_path, fake_provider, tenant("beta", new_entry), policy=ECHO)
        assert httpx.post(f"{gw.base}/admin/reload", timeout=30).status_code == 200
        assert models_status(gw, old_key) == 401 and models_status(gw, new_key) == 200
        assert metric(gw, "switchyard_config_last_reload_successful") == 1
    finally:
        gw.stop()


def test_a_change_only_a_restart_applies_is_refused_whole(tmp_path, fake_provider):
    gw, old_key, new_key, new_entry = started(tmp_path, fake_provider)
    try:
        rewrite(gw, tmp_path, fake_provider, tenant("acme", new_entry), server="max_body_bytes = 1000\n")
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 422, r.text
        assert "[server] changed" in r.json()["error"]["message"] and "restart" in r.json()["error"]["message"]
        assert models_status(gw, old_key) == 200 and models_status(gw, new_key) == 401
        # Deleting the last key would open the gateway to every caller: refused.
        rewrite(gw, tmp_path, fake_provider, '[[tenants]]\nname = "acme"\n')
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 422 and "no tenant has a key left" in r.json()["error"]["message"], r.text
        assert models_status(gw, "sy-anything") == 401 and models_status(gw, old_key) == 200
        # Comments and layout are not changes.
        rewrite(gw, tmp_path, fake_provider, "# rotated\n" + tenant("acme", new_entry))
        gw.config_path.write_text(gw.config_path.read_text().replace("[server]\n", "# edited\n[server]\n\n"))
        assert httpx.post(f"{gw.base}/admin/reload", timeout=30).status_code == 200
        assert models_status(gw, new_key) == 200
    finally:
        gw.stop()


def test_reloaded_policy_and_rate_limits_apply_to_the_next_request(tmp_path, fake_provider):
    key, entry = new_virtual_key()
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    gw = Gateway(tmp_path, remote_only_config(fake_provider, tenant("acme", entry)), policy=ECHO)
    try:
        assert httpx.post(f"{gw.v1}/route", headers=auth, json=body).json()["rule"] == "default"
        for _ in range(3):
            r = httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=30)
            assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers
        renamed = '[[rule]]\nname = "renamed"\nroute = "fake/echo"\n'
        rewrite(gw, tmp_path, fake_provider, tenant("acme", entry, "rate_limit = { rpm = 1 }"), policy=renamed)
        assert httpx.post(f"{gw.base}/admin/reload", timeout=30).status_code == 200
        assert httpx.post(f"{gw.v1}/route", headers=auth, json=body).json()["rule"] == "renamed"
        first = httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=30)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
        assert first.headers["x-switchyard-rule"] == "renamed"
        second = httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=30)
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        gw.stop()


def test_reload_is_behind_the_admin_key(tmp_path, fake_provider):
    key, entry = new_virtual_key()
    config = remote_only_config(fake_provider, tenant("acme", entry)).replace(
        'region = "eu-west"\n', 'region = "eu-west"\nadmin_key_env = "RELOAD_TEST_ADMIN_KEY"\n', 1)
    gw = Gateway(tmp_path, config, policy=ECHO, env={"RELOAD_TEST_ADMIN_KEY": "admin-secret-1234"})
    try:
        assert httpx.post(f"{gw.base}/admin/reload", timeout=30).status_code == 401
        assert httpx.post(f"{gw.base}/admin/reload", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 401
        assert httpx.get(f"{gw.base}/admin/reload", headers={"Authorization": "Bearer admin-secret-1234"}).status_code == 405
        r = httpx.post(f"{gw.base}/admin/reload", headers={"Authorization": "Bearer admin-secret-1234"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        gw.stop()


def test_a_price_change_reloads_and_bills_the_next_request_at_it(tmp_path, fake_provider):
    gw, old_key, _, _ = started(tmp_path, fake_provider)
    auth = {"Authorization": f"Bearer {old_key}"}
    body = {"model": "fake/metered", "messages": [{"role": "user", "content": "price me"}]}
    try:
        before = httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=30)
        assert before.status_code == 200, before.text
        # Every price of the metered model doubled; nothing else changed.
        config = gw.config_path.read_text()
        doubled = config.replace("input_per_mtok = 1000.0, output_per_mtok = 2000.0", "input_per_mtok = 2000.0, output_per_mtok = 4000.0")
        assert doubled != config
        gw.config_path.write_text(doubled)
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 200, r.text
        after = httpx.post(f"{gw.v1}/chat/completions", headers=auth, json=body, timeout=30)
        # The fake's metered model reports the same usage for the same request.
        assert after.json()["usage"] == before.json()["usage"]
        assert float(after.headers["x-switchyard-cost-usd"]) == 2 * float(before.headers["x-switchyard-cost-usd"]) > 0
        # Anything else about a provider still needs a restart.
        gw.config_path.write_text(doubled.replace("timeout_ms = 20000", "timeout_ms = 30000"))
        r = httpx.post(f"{gw.base}/admin/reload", timeout=30)
        assert r.status_code == 422 and "[[providers]] changed" in r.json()["error"]["message"], r.text
    finally:
        gw.stop()
