"""The admin key guards `/admin/*` and `/dashboard` (Bearer, HTTP Basic, or the session cookie
from `POST /dashboard/login`; never in a URL and never logged); `/admin/stats` reflects traffic;
the dashboard page is self-contained."""

import base64
import re

import httpx
import pytest

from conftest import Gateway, auth_failures, fake_provider_section, gateway_config

KEY = "adm-9b1f-secret-key"


@pytest.fixture(scope="module")
def admin(tmp_path_factory, fake_provider):
    config = gateway_config(fake_provider_section(fake_provider)).replace(
        '[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "ADMIN_TEST_KEY"')
    gw = Gateway(tmp_path_factory.mktemp("admin"), config, '[[rule]]\nname = "default"\nroute = "local"\n',
                 env={"ADMIN_TEST_KEY": KEY})
    for body in ({"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
                 {"model": "fake/echo", "messages": [{"role": "user", "content": "ping"}]}):
        assert httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=60).status_code == 200
    yield gw
    gw.stop()


def test_admin_endpoints_refuse_requests_without_the_key(admin):
    before = auth_failures(admin, "admin")
    r = httpx.get(f"{admin.base}/admin/stats")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{admin.base}/admin/stats", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401
    page = httpx.get(f"{admin.base}/dashboard")
    assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
    assert "/dashboard/login" in page.text
    assert httpx.get(f"{admin.base}/metrics").status_code == 200, "metrics stay open for scrapers"
    assert auth_failures(admin, "admin") == before + 3


def test_bearer_and_basic_are_accepted(admin):
    stats = httpx.get(f"{admin.base}/admin/stats", headers={"authorization": f"Bearer {KEY}"})
    assert stats.status_code == 200
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    page = httpx.get(f"{admin.base}/dashboard", headers={"authorization": f"Basic {basic}"})
    assert page.status_code == 200 and "<svg" in page.text
    # Scheme names are case-insensitive (RFC 9110): a lower-case one is not a wrong key.
    for value in (f"bearer {KEY}", f"BEARER  {KEY}", f"basic {basic}"):
        assert httpx.get(f"{admin.base}/admin/stats", headers={"authorization": value}).status_code == 200, value


def test_admin_answers_are_never_cached_or_framed(admin):
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    for r in (httpx.get(f"{admin.base}/admin/stats", headers={"authorization": f"Bearer {KEY}"}),
              httpx.get(f"{admin.base}/dashboard", headers={"authorization": f"Basic {basic}"}),
              httpx.get(f"{admin.base}/admin/stats"),
              httpx.post(f"{admin.base}/dashboard/login", json={"key": "nope"}),
              httpx.get(f"{admin.base}/admin/nothing", headers={"authorization": f"Bearer {KEY}"}),
              httpx.get(f"{admin.base}/dashboard/", headers={"authorization": f"Bearer {KEY}"})):
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY", (r.status_code, r.headers)
    # Unknown admin paths are 404 only behind the key: what exists there is not listed to anyone.
    assert httpx.get(f"{admin.base}/admin/nothing", headers={"authorization": f"Bearer {KEY}"}).status_code == 404
    assert httpx.get(f"{admin.base}/admin/nothing").status_code == 401
    assert "cache-control" not in httpx.get(f"{admin.base}/healthz").headers


def test_login_sets_an_httponly_session_cookie(admin):
    bad = httpx.post(f"{admin.base}/dashboard/login", json={"key": "nope"})
    assert bad.status_code == 401
    for malformed in ("not json", '{"key": 5}', "{}"):
        r = httpx.post(f"{admin.base}/dashboard/login", content=malformed, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "key", r.text
    good = httpx.post(f"{admin.base}/dashboard/login", json={"key": KEY})
    assert good.status_code == 204
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY not in cookie
    assert "Max-Age=43200" in cookie, "a login lasts 12 hours"
    token = cookie.split(";")[0]
    assert httpx.get(f"{admin.base}/admin/stats", headers={"cookie": token}).status_code == 200
    assert httpx.get(f"{admin.base}/admin/stats", headers={"cookie": "switchyard_session=forged"}).status_code == 401


def test_stats_reflect_the_traffic(admin):
    s = httpx.get(f"{admin.base}/admin/stats", headers={"authorization": f"Bearer {KEY}"}).json()
    hour = s["hour"]
    assert hour["total"]["requests"] >= 2
    assert hour["targets"]["local/local-small"]["requests"] >= 1 and hour["targets"]["fake/echo"]["requests"] >= 1
    assert hour["targets"]["fake/echo"]["cost_usd"] > 0
    assert 0 < hour["total"]["local_share"] < 1
    assert hour["targets"]["fake/echo"]["latency_p50_ms"] is not None
    assert sum(s["requests_per_minute"]) >= 2 and s["circuits"] == {"fake": False}


def test_dashboard_is_self_contained_and_the_key_is_never_logged(admin):
    basic = base64.b64encode(f"x:{KEY}".encode()).decode()
    page = httpx.get(f"{admin.base}/dashboard", headers={"authorization": f"Basic {basic}"}).text
    urls = re.findall(r"https?://[^\s'\"]+", page)
    assert urls == ["http://www.w3.org/2000/svg"], urls  # an XML namespace name, never fetched
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert not any(KEY in line for line in admin.process.lines)
