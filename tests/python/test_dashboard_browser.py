"""Headless Chromium (the distribution's `chromium`, installed by `make test`) renders the
dashboard after traffic: the DOM shows the targets and non-zero figures, a screenshot is saved
as a test artifact (target/test-artifacts/dashboard.png), and the browser's network log shows the
page requesting nothing from any host but the gateway. The admin-key login itself is tested over HTTP in
test_admin_dashboard.py; here the gateway runs without an admin key."""

import json
import shutil
import subprocess

import httpx
import pytest

from conftest import ROOT, Gateway, fake_provider_section, gateway_config, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, fake_provider):
    assert CHROMIUM, "chromium is missing: `make test` installs it (make chromium)"
    tmp = tmp_path_factory.mktemp("browser")
    store = tmp / "shadow.jsonl"
    shadow = f'[shadow]\nsample = 1.0\njudge = "fake/judge"\nremote = "fake/echo"\nstore = "{store}"\ndaily_usd = 1.0\n'
    gw = Gateway(tmp, gateway_config(fake_provider_section(fake_provider) + shadow), '[[rule]]\nname = "default"\nroute = "local"\n')
    for body in ({"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
                 {"model": "fake/echo", "messages": [{"role": "user", "content": "ping"}]}):
        assert httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=60).status_code == 200
    # The local answer's shadow comparison, for the shadow panel.
    wait_for(lambda: store.exists() and store.read_text().strip(), timeout=30, what="a shadow comparison")
    artifacts = ROOT / "target" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    netlog = tmp / "netlog.json"
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter",
              "--disable-field-trial-config", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000",
              "--window-size=1200,1300"]
    url = f"{gw.base}/dashboard"
    dom = subprocess.run(common + [f"--log-net-log={netlog}", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    subprocess.run(common + [f"--screenshot={artifacts / 'dashboard.png'}", url], capture_output=True, timeout=120)
    yield dom.stdout, json.loads(netlog.read_text() or "{}"), gw.base, artifacts / "dashboard.png"
    gw.stop()


def test_rendered_dom_shows_targets_and_figures(rendered):
    dom, _, _, screenshot = rendered
    assert "local/local-small" in dom and "fake/echo" in dom, dom[:2000]
    assert "updated " in dom, "the page fetched /admin/stats and drew it"
    assert "<rect" in dom, "the requests-per-minute chart has bars"
    assert "<td>queue places given to lighter tenants</td><td>0</td>" in dom, "the engine panel"
    # The shadow panel: one comparison in the lowest complexity bucket, judged for the remote answer.
    assert "Shadow evaluation" in dom
    assert "<td>0.0-0.2</td><td>1</td><td>0.0%</td>" in dom, dom[dom.find("Shadow evaluation"):][:1500]
    assert screenshot.exists() and screenshot.stat().st_size > 10_000


def test_page_contacts_no_other_host(rendered):
    _, netlog, base, _ = rendered
    # Requests made on the page's behalf carry its site in their network isolation key; the
    # browser's own background traffic (update checks) does not, and is not the page's doing.
    page_urls = set()
    for event in netlog.get("events", []):
        params = event.get("params") or {}
        if str(params.get("network_isolation_key", "")).startswith("http://127.0.0.1") and "url" in params:
            page_urls.add(params["url"])
    assert f"{base}/dashboard" in page_urls and f"{base}/admin/stats" in page_urls, page_urls
    assert all(u.startswith(base) for u in page_urls), sorted(u for u in page_urls if not u.startswith(base))
