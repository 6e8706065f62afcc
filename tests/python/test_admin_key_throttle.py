"""Wrong admin keys are counted per client address: after 10 within five minutes that address's
key attempts (the right key too) get 429 with Retry-After until the window ends, while other
addresses and dashboard sessions already handed out keep working."""

import base64

import httpx
import pytest

from conftest import Gateway, auth_failures, gateway_config

KEY = "adm-7c2e-throttle-key"


@pytest.fixture()
def guarded(tmp_path):
    config = gateway_config().replace('[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\nadmin_key_env = "ADMIN_TEST_KEY"')
    gw = Gateway(tmp_path, config, '[[rule]]\nname = "default"\nroute = "local"\n', env={"ADMIN_TEST_KEY": KEY})
    yield gw
    gw.stop()


def test_an_address_sending_wrong_keys_is_locked_out_and_others_are_not(guarded):
    base = guarded.base
    session = httpx.post(f"{base}/dashboard/login", json={"key": KEY})
    assert session.status_code == 204
    cookie = session.headers["set-cookie"].split(";")[0]
    wrong_basic = base64.b64encode(b"admin:guess").decode()
    attempts = [lambda: httpx.post(f"{base}/dashboard/login", json={"key": "guess"}),
                lambda: httpx.get(f"{base}/admin/stats", headers={"authorization": "Bearer guess"}),
                lambda: httpx.get(f"{base}/dashboard", headers={"authorization": f"Basic {wrong_basic}"})]
    for i in range(10):
        assert attempts[i % 3]().status_code == 401, f"attempt {i + 1}"
    assert auth_failures(guarded, "admin") == 10

    # The 11th attempt is refused before the key is compared: the right key gets 429 too.
    for r in (httpx.get(f"{base}/admin/stats", headers={"authorization": f"Bearer {KEY}"}),
              httpx.post(f"{base}/dashboard/login", json={"key": KEY})):
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["retry-after"]) <= 300
        assert KEY not in r.text
    assert auth_failures(guarded, "admin") == 10, "refused attempts are not compared, so not counted as wrong"

    # A session handed out before keeps working; so does another client address.
    assert httpx.get(f"{base}/admin/stats", headers={"cookie": cookie}).status_code == 200
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        assert other.get(f"{base}/admin/stats", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert other.get(f"{base}/admin/stats", headers={"authorization": "Bearer guess"}).status_code == 401
