"""CORS (`server.cors_allowed_origins`): a web page of an allowed origin calls `/v1/*` from a real
browser (headless Chromium) with its virtual key and reads the answer and the gateway's headers;
a page of another origin is refused by the browser. Over HTTP: preflights are answered before
authentication, a 401 is readable by the allowed page too, and without the key no CORS header is
sent at all."""

import http.server
import shutil
import subprocess
import threading

import httpx
import pytest

from conftest import Gateway, fake_provider_section, free_port, new_virtual_key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The page asks the gateway for a completion and writes what its script could read into the DOM.
PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
fetch("GATEWAY/v1/chat/completions", {method: "POST",
  headers: {"Authorization": "Bearer KEY", "Content-Type": "application/json", "X-Stainless-Lang": "js"},
  body: JSON.stringify({model: "fake/echo", messages: [{role: "user", content: "from the browser"}]})})
 .then(async r => { const j = await r.json();
   document.getElementById("out").textContent = "status=" + r.status + " target=" + r.headers.get("x-switchyard-target")
     + " id=" + (r.headers.get("x-request-id") ? "yes" : "no") + " content=" + j.choices[0].message.content; })
 .catch(e => { document.getElementById("out").textContent = "blocked: " + e.name; });
</script></body></html>"""


class Page:
    """Serves PAGE (filled in) on its own port: another origin than the gateway's."""

    def __init__(self, html, port=None):
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = port or free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def cors_gateway(tmp_path_factory, fake_provider):
    key, key_hash = new_virtual_key()
    allowed_port = free_port()
    config = (f'[server]\nregion = "eu-west"\ncors_allowed_origins = ["http://127.0.0.1:{allowed_port}"]\n\n'
              + fake_provider_section(fake_provider)
              + f'[[tenants]]\nname = "web"\nkeys = ["{key_hash}"]\n[policy]\nfile = "{{policy}}"\n')
    gw = Gateway(tmp_path_factory.mktemp("cors"), config, '[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    gw.key, gw.allowed = key, f"http://127.0.0.1:{allowed_port}"
    yield gw
    gw.stop()


def preflight(gw, origin):
    return httpx.options(f"{gw.v1}/chat/completions", timeout=10, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-stainless-lang"})


def test_preflight_from_the_allowed_origin_is_answered_without_a_key(cors_gateway):
    answer = preflight(cors_gateway, cors_gateway.allowed)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == cors_gateway.allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert set(answer.headers["access-control-allow-headers"].split(",")) >= {"authorization", "content-type", "x-stainless-lang"}
    assert "access-control-allow-credentials" not in answer.headers


def test_other_origins_get_no_grant(cors_gateway):
    answer = preflight(cors_gateway, "http://evil.example")
    assert "access-control-allow-origin" not in answer.headers
    answer = httpx.get(f"{cors_gateway.v1}/models", headers={"origin": "http://evil.example", "authorization": f"Bearer {cors_gateway.key}"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_answers_and_errors_to_the_allowed_origin_are_readable(cors_gateway):
    ok = httpx.get(f"{cors_gateway.v1}/models", headers={"origin": cors_gateway.allowed, "authorization": f"Bearer {cors_gateway.key}"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == cors_gateway.allowed
    assert "x-request-id" in ok.headers["access-control-expose-headers"]
    # A wrong key's 401 reaches the page as the OpenAI-style error, not as a network failure.
    denied = httpx.get(f"{cors_gateway.v1}/models", headers={"origin": cors_gateway.allowed, "authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == cors_gateway.allowed
    assert denied.json()["error"]["code"] == "invalid_api_key"


def test_without_the_setting_no_cors_headers(tmp_path, fake_provider):
    config = f'[server]\nregion = "eu-west"\n\n{fake_provider_section(fake_provider)}\n[policy]\nfile = "{{policy}}"\n'
    gw = Gateway(tmp_path, config, '[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    try:
        answer = preflight(gw, "http://127.0.0.1:1")
        assert not any(h.startswith("access-control-") for h in answer.headers), answer.headers
        assert answer.status_code == 405, "no CORS: OPTIONS is a method the route does not serve"
    finally:
        gw.stop()


def run_page(tmp_path, page):
    assert CHROMIUM, "chromium is missing: `make test` installs it (make chromium)"
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", f"{page.origin}/"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-origin", "other-origin"])
def test_a_browser_page_calls_the_gateway(cors_gateway, tmp_path, allowed):
    html = PAGE.replace("GATEWAY", cors_gateway.base).replace("KEY", cors_gateway.key)
    # The allowed page is served on the port the gateway's configuration names.
    page = Page(html, int(cors_gateway.allowed.rsplit(":", 1)[1]) if allowed else None)
    try:
        dom = run_page(tmp_path, page)
    finally:
        page.stop()
    if allowed:
        assert "status=200 target=fake/echo id=yes content=echo: from the browser" in dom, dom[-800:]
    else:
        assert "blocked: TypeError" in dom, dom[-800:]
