"""`POST /v1/route` and the `check` / `explain` commands."""

import json
import os
import re
import signal
import subprocess

import httpx

from conftest import BIN, ROOT, Gateway, fake_provider_section, gateway_config, remote_only_config, wait_for


def test_route_answers_the_decision_shape_without_generating(gateway):
    before = httpx.get(f"{gateway.base}/readyz").json()["engine"]["prompt_tokens_total"]
    r = httpx.post(
        f"{gateway.v1}/route",
        json={"model": "auto", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"x-switchyard-tags": "Confidential, pii"},
    )
    assert r.status_code == 200
    d = r.json()
    spec_keys = {"tier", "target", "rule", "complexity", "hard", "privacy", "redact", "fallbacks", "reasons"}
    assert spec_keys <= set(d) and set(d) - spec_keys <= {"rerouted", "features", "violation"}
    assert d["tier"] == "local" and d["target"] == "local/local-small" and d["rule"] == "default"
    assert 0.0 <= d["complexity"] <= 1.0 and d["hard"] is False
    assert d["privacy"]["tags"] == ["confidential", "pii"]
    assert isinstance(d["reasons"], list) and d["reasons"]
    assert httpx.get(f"{gateway.base}/readyz").json()["engine"]["prompt_tokens_total"] == before


def test_route_rejects_bad_bodies_like_chat(gateway):
    r = httpx.post(f"{gateway.v1}/route", json={"model": "auto", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def run(*args, stdin=None, env=None):
    return subprocess.run([str(BIN), *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env} if env else None)


def test_check_accepts_the_default_config_and_prints_a_summary():
    r = run("check", "--config", "config/gateway.toml")
    assert r.returncode == 0, r.stderr
    assert "local/local-small" in r.stdout and "rule" in r.stdout
    assert "scorer   baseline (" in r.stdout, r.stdout


def test_check_names_file_line_and_key_of_an_unknown_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:0"\n\n[local]\nmodel = "x.gguf"\nthreadz = 4\n')
    r = run("check", "--config", str(cfg))
    assert r.returncode == 1
    assert f"{cfg}:6:" in r.stderr and "threadz" in r.stderr


def test_check_reports_every_problem(tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "hard"\nwhen.complexity = "hard"\nroute = "acme/x"\n')
    cfg = tmp_path / "g.toml"
    cfg.write_text(gateway_config().replace("{policy}", str(policy)).replace("parallel = 4", "parallel = 0"))
    r = run("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "parallel" in r.stderr
    assert f"{policy}:4:" in r.stderr and '"acme/x" is not configured' in r.stderr
    assert "matches everything" in r.stderr


def test_check_warns_about_secrets_this_environment_lacks_and_serve_refuses_an_empty_admin_key(tmp_path, fake_provider):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "default"\nroute = "local"\n')
    cfg = tmp_path / "g.toml"
    config = gateway_config(fake_provider_section(fake_provider, key_env="SY_TEST_UNSET_KEY")).replace("{policy}", str(policy))
    config = config.replace('[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "SY_TEST_ADMIN"')
    cfg.write_text(config)
    r = run("check", "--config", str(cfg))
    # `check` may run where the secrets are not: warnings, not errors.
    assert r.returncode == 0, r.stderr
    assert "SY_TEST_UNSET_KEY (api_key_env) is not set here" in r.stderr, r.stderr
    assert "SY_TEST_ADMIN is not set here" in r.stderr, r.stderr
    # Set, but to what `serve` would refuse: warned about too, never echoed.
    r = subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SY_TEST_ADMIN": "adm\x7fZQXV", "SY_TEST_UNSET_KEY": "  "})
    assert r.returncode == 0, r.stderr
    assert "SY_TEST_ADMIN holds characters an HTTP header cannot carry here" in r.stderr, r.stderr
    assert "SY_TEST_UNSET_KEY (api_key_env) is empty here" in r.stderr, r.stderr
    assert "ZQXV" not in r.stderr + r.stdout
    # An empty admin key would be an empty password: serve refuses to start.
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SY_TEST_ADMIN": "", "SY_TEST_UNSET_KEY": "k", "SWITCHYARD_LISTEN": "127.0.0.1:0"})
    assert serve.returncode != 0
    assert "SY_TEST_ADMIN is empty" in serve.stderr, serve.stderr
    # So would an empty provider key (sent as `Bearer `); and an empty SWITCHYARD_LISTEN means unset.
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SY_TEST_ADMIN": "a-key", "SY_TEST_UNSET_KEY": " ", "SWITCHYARD_LISTEN": ""})
    assert serve.returncode != 0
    assert "SY_TEST_UNSET_KEY (api_key_env) is empty" in serve.stderr and "socket address" not in serve.stderr, serve.stderr


def test_check_warns_about_an_open_gateway_unreachable_rules_and_keyless_hosted_providers(tmp_path, fake_provider):
    # Removing the last key leaves the gateway open: every request is tenant `default`, and the
    # tenants' limits, budgets and residency stop applying. `check` says so.
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "everything"\nroute = "local"\n\n[[rule]]\nname = "hard"\nwhen.complexity = "hard"\nroute = "openai/echo"\n\n'
                      '[[rule]]\nname = "named"\nwhen.requested_model = "openai/*"\nroute = "openai/echo"\n\n[[rule]]\nname = "default"\nroute = "local"\n')
    cfg = tmp_path / "g.toml"
    tenants = '[[tenants]]\nname = "growth"\nkeys = []\nrate_limit = { rpm = 5 }\n\n[[tenants]]\nname = "health"\nresidency = ["eu"]\n'
    cfg.write_text(gateway_config(fake_provider_section(fake_provider, name="openai", kind="openai", region="eu-west") + tenants).replace("{policy}", str(policy)))
    r = run("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert 'no tenant has keys, so requests need no key and are all served as tenant "default"' in r.stderr, r.stderr
    assert '"growth", "health" never apply' in r.stderr, r.stderr
    assert 'rule "hard" is never reached: rule "everything" before it has no condition' in r.stderr, r.stderr
    assert 'rule "default" is never reached' in r.stderr and 'rule "named" is never reached' not in r.stderr, r.stderr
    assert 'provider "openai" (kind openai) has no api_key_env' in r.stderr, r.stderr
    # With a key anywhere, keys are required: no such warning.
    key = run("keys", "new", "--tenant", "growth").stdout.split('keys = ["')[1].split('"')[0]
    cfg.write_text(cfg.read_text().replace("keys = []", f'keys = ["{key}"]'))
    r = run("check", "--config", str(cfg))
    assert r.returncode == 0 and "no tenant has keys" not in r.stderr, r.stderr
    # Keys guard the API, but nothing guards the dashboard's view of every tenant.
    assert "server.admin_key_env is not set: /dashboard and /admin/stats are open" in r.stderr, r.stderr
    cfg.write_text(cfg.read_text().replace('[server]\n', '[server]\nadmin_key_env = "SY_TEST_ADMIN_KEY"\n', 1))
    r = run("check", "--config", str(cfg), env={"SY_TEST_ADMIN_KEY": "an-admin-key-of-some-length"})
    assert r.returncode == 0 and "admin_key_env is not set" not in r.stderr, r.stderr


def test_the_readme_walkthrough_passes_check_with_the_worked_policy(tmp_path):
    # The README's own snippets, put together as its reader would (the tenant's `keys` filled in,
    # the worked policy): acme-eu's `confidential` tag sends all its requests to the first rule,
    # so the remote rule after it (a provider with no region) is no residency problem.
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    server = next(b for b in blocks if "[server]" in b and "[[providers]]" in b)
    tenants = next(b for b in blocks if "[[tenants]]" in b)
    key = run("keys", "new", "--tenant", "acme-eu").stdout.split('keys = ["')[1].split('"')[0]
    config = server.replace("policies/default.toml", str(ROOT / "policies/hybrid.toml")).replace(
        'model = "models/', f'model = "{ROOT}/models/') + tenants.replace('"sha256:…"', f'"{key}"')
    cfg = tmp_path / "walkthrough.toml"
    cfg.write_text(config)
    r = run("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_secrets_are_read_without_the_newline_a_secrets_file_leaves(tmp_path, fake_provider):
    # `SY_KEY=$(cat key.txt)` keeps no newline, but env files and mounted secrets often do: the
    # provider key must still go out, and the admin key still be one a client can present.
    config = remote_only_config(fake_provider).replace(
        'name = "fake"\n', 'name = "fake"\napi_key_env = "SY_NL_KEY"\n', 1).replace(
        '[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "SY_NL_ADMIN"')
    gw = Gateway(tmp_path, config, policy='[[rule]]\nname = "all"\nroute = "fake/echo"\n',
                 env={"SY_NL_KEY": "sk-newline-key\n", "SY_NL_ADMIN": " admin-newline-key\r\n"})
    try:
        r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "nl key"}]}, timeout=30)
        assert r.status_code == 200, r.text
        sent = [x for x in httpx.get(f"{fake_provider}/control/requests").json() if "nl key" in str(x["body"].get("messages"))]
        assert sent[-1]["authorization"] == "Bearer sk-newline-key"
        assert httpx.get(f"{gw.base}/admin/stats", headers={"authorization": "Bearer admin-newline-key"}).status_code == 200
    finally:
        gw.stop()
    # A key no header can carry, even trimmed, stops the start with the variable's name only.
    config_path = tmp_path / "gateway.toml"
    serve = subprocess.run([str(BIN), "serve", "--config", str(config_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SY_NL_KEY": "sk-in\nside", "SY_NL_ADMIN": "a", "SWITCHYARD_LISTEN": "127.0.0.1:0"})
    assert serve.returncode != 0
    assert "SY_NL_KEY (api_key_env) holds characters an HTTP header cannot carry" in serve.stderr and "sk-in" not in serve.stderr, serve.stderr


def test_the_gateway_outlives_the_pipe_its_logs_go_to(tmp_path, fake_provider):
    # A log shipper that goes away (here: a reader that closes the pipe after one line) must not
    # take the gateway down: log lines that cannot be written are dropped.
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    cfg = tmp_path / "g.toml"
    cfg.write_text(remote_only_config(fake_provider).replace("{policy}", str(policy)))
    proc = subprocess.Popen([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "SWITCHYARD_LISTEN": "127.0.0.1:0", "SWITCHYARD_LOG": "debug"})
    try:
        addr = None
        for raw in proc.stderr:
            m = re.search(rb"addr=(\S+)", raw)
            if m:
                addr = m.group(1).decode()
                break
        assert addr, "the gateway printed its address"
        proc.stderr.close()
        for _ in range(20):
            r = httpx.post(f"http://{addr}/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            assert r.status_code == 200
        assert proc.poll() is None, "still running"
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "and stops cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_output_to_a_full_device_is_an_error_not_a_panic():
    with open("/dev/full", "w") as full:
        r = subprocess.run([str(BIN), "keys", "new", "--tenant", "acme"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert "writing to standard output" in r.stderr and "panicked" not in r.stderr, r.stderr


def test_a_second_stop_signal_cuts_the_drain_short(tmp_path, fake_provider):
    # A stream the fake holds for 30 s keeps the drain going; a second signal ends it now.
    gw = Gateway(tmp_path, remote_only_config(fake_provider), policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    try:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", timeout=60,
                          json={"model": "fake/gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # held: a dropped iterator closes the connection
            next(lines)
            gw.process.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: any("draining in-flight requests" in line for line in gw.process.lines), what="the drain to start")
            assert gw.process.proc.poll() is None, "the held stream keeps the drain going"
            gw.process.proc.send_signal(signal.SIGINT)
            # Well before the fake lets the stream go (30 s) or the drain's deadline (30 s).
            assert gw.process.proc.wait(timeout=20) == 0
        wait_for(lambda: any("second stop signal" in line for line in gw.process.lines), what="the second signal's log line")
    finally:
        httpx.post(f"{fake_provider}/control/release")
        gw.stop()


def test_an_unset_redis_url_env_stops_serve_before_the_model_loads(tmp_path):
    cfg = tmp_path / "g.toml"
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "home"\nroute = "local"\n')
    cfg.write_text(gateway_config('[[tenants]]\nname = "default"\nbudget = { daily_usd = 1.0 }\n\n[redis]\nurl_env = "SY_TEST_REDIS_UNSET"\n')
                   .replace("{policy}", str(policy)))
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SWITCHYARD_LISTEN": "127.0.0.1:0"})
    assert serve.returncode != 0
    assert "SY_TEST_REDIS_UNSET is not set" in serve.stderr, serve.stderr
    assert "local engine ready" not in serve.stderr, "the model was loaded first: " + serve.stderr


def test_an_unreadable_log_filter_is_said_not_passed_over(tmp_path):
    r = run("check", "--config", "config/gateway.toml", env={"SWITCHYARD_LOG": "gateway=loud"})
    assert r.returncode == 0, r.stderr
    assert "SWITCHYARD_LOG is not a log filter" in r.stderr, r.stderr


def test_explain_prints_the_decision_for_a_request_on_stdin():
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Hi"}]})
    r = run("explain", "--config", "config/gateway.toml", "-", stdin=body)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["target"] == "local/local-small" and d["rule"] == "default"
