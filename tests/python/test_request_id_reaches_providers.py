"""The gateway's request id goes to the provider as `X-Client-Request-Id` (OpenAI's header for a
caller's own id), so that a slow or failed call can be matched with the provider's logs; the
client gets the same id as `x-request-id`."""

import httpx


def last_upstream_request(fake_provider):
    return httpx.get(f"{fake_provider}/control/requests").json()[-1]


def test_the_request_id_reaches_the_provider(gateway, fake_provider):
    for stream in (False, True):
        r = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                       json={"model": "fake/echo", "stream": stream, "messages": [{"role": "user", "content": "trace me"}]})
        assert r.status_code == 200, r.text
        sent = last_upstream_request(fake_provider)
        assert sent["body"]["messages"][-1]["content"] == "trace me"
        assert sent["client_request_id"] == r.headers["x-request-id"], (sent, r.headers)
