"""Headless Chromium signs in to a dashboard guarded by the admin key, the way a person does:
the page answers 401 with its login form, the key is typed into the form and submitted (a POST
body, never a URL), and the dashboard then draws figures from `/admin/stats`. Driven over the
Chrome DevTools Protocol (websocket-client); a screenshot is saved as a test artifact."""

import base64
import itertools
import json
import shutil
import subprocess

import httpx
import pytest
import websocket

from conftest import ROOT, Gateway, fake_provider_section, gateway_config, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "adm-browser-7c1e-secret"


class DevTools:
    """One page of a headless Chromium, over its DevTools websocket."""

    def __init__(self, tmp):
        assert CHROMIUM, "chromium is missing: `make test` installs it (make chromium)"
        profile = tmp / "profile"
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1200,1300", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        port = wait_for(lambda: port_file.exists() and port_file.read_text().split("\n")[0], timeout=30,
                        what="Chromium's DevTools port")
        pages = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
                         timeout=30, what="a page target")
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.auth_prompts = 0

    def call(self, method, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]
            self.on_event(message)

    def on_event(self, message):
        params = message.get("params", {})
        if message.get("method") == "Fetch.requestPaused":
            self.send("Fetch.continueRequest", requestId=params["requestId"])
        elif message.get("method") == "Fetch.authRequired":
            # The person dismisses the browser's Basic-auth prompt and uses the page's form.
            self.auth_prompts += 1
            self.send("Fetch.continueWithAuth", requestId=params["requestId"], authChallengeResponse={"response": "CancelAuth"})

    def send(self, method, **params):
        self.ws.send(json.dumps({"id": next(self.ids), "method": method, "params": params}))

    def eval(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self):
        self.ws.close()
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def guarded(tmp_path, fake_provider):
    config = gateway_config(fake_provider_section(fake_provider)).replace(
        '[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "ADMIN_TEST_KEY"')
    gw = Gateway(tmp_path, config, '[[rule]]\nname = "default"\nroute = "local"\n', env={"ADMIN_TEST_KEY": KEY})
    for body in ({"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
                 {"model": "fake/echo", "messages": [{"role": "user", "content": "ping"}]}):
        assert httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=60).status_code == 200
    yield gw
    gw.stop()


def test_signing_in_through_the_form_shows_the_dashboard(guarded, tmp_path):
    browser = DevTools(tmp_path)
    try:
        browser.call("Page.enable")
        browser.call("Fetch.enable", patterns=[{"urlPattern": "*"}], handleAuthRequests=True)
        browser.call("Page.navigate", url=f"{guarded.base}/dashboard")
        wait_for(lambda: browser.eval("!!document.getElementById('key')"), what="the login form")
        assert browser.auth_prompts == 1, "the 401 offers HTTP Basic first"
        assert browser.eval("document.getElementById('updated')") is None, "no figures before signing in"
        browser.eval(f"document.getElementById('key').value = {json.dumps(KEY)}; "
                     "document.getElementById('login').requestSubmit(); true")
        wait_for(lambda: (browser.eval("(document.getElementById('updated') || {}).textContent") or "").startswith("updated "),
                 timeout=20, what="the dashboard drawn after signing in")
        text = browser.eval("document.body.innerText")
        assert "local/local-small" in text and "fake/echo" in text, text[:2000]
        requests_card = browser.eval("[...document.querySelectorAll('.card')].find(c => c.textContent.startsWith('Requests (hour)')).querySelector('b').textContent")
        assert int(requests_card) >= 2
        assert browser.eval("location.href") == f"{guarded.base}/dashboard", "the key never goes into a URL"
        assert browser.eval("document.cookie") == "", "the session cookie is HttpOnly"
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        artifacts = ROOT / "target" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "dashboard-after-login.png").write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
    assert not any(KEY in line for line in guarded.process.lines), "the admin key never reaches the log"
