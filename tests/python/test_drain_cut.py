"""Requests still running when the drain is cut (its 30 s deadline, or here a second stop
signal) get a last word instead of a broken connection: 503 `shutting_down` with `Retry-After`
for one not yet answered (the OpenAI SDKs retry it), and a final error event for a stream under
way, in its API's shape (chat: an error object then `[DONE]`; Responses: an `error` event)."""

import json
import signal
import threading

import httpx

from conftest import Gateway, fake_requests, remote_only_config, wait_for


def test_requests_cut_at_the_drains_end_get_a_last_word(tmp_path, fake_provider):
    gw = Gateway(tmp_path, remote_only_config(fake_provider), policy='[[rule]]\nname = "echo"\nroute = "fake/echo"\n')
    held = {}
    try:
        with httpx.Client(timeout=60) as client, \
             client.stream("POST", f"{gw.v1}/chat/completions",
                           json={"model": "fake/gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as chat, \
             client.stream("POST", f"{gw.v1}/responses", json={"model": "fake/gated", "stream": True, "input": "hi"}) as responses:
            assert chat.status_code == 200 and responses.status_code == 200
            # Held: a dropped iterator closes its connection.
            chat_lines, responses_lines = chat.iter_lines(), responses.iter_lines()
            chat_seen = [next(chat_lines)]
            responses_seen = [next(responses_lines)]
            # A non-streamed request the fake answers only after 25 s.
            before = len(fake_requests(fake_provider))
            httpx.post(f"{fake_provider}/control/faults", json={"faults": [{"slow_ms": 25000}]}).raise_for_status()

            def whole():
                held["answer"] = httpx.post(f"{gw.v1}/chat/completions", timeout=60,
                                            json={"model": "fake/echo", "messages": [{"role": "user", "content": "slow"}]})
            waiting = threading.Thread(target=whole)
            waiting.start()
            wait_for(lambda: len(fake_requests(fake_provider)) > before, what="the slow request to reach the fake")
            gw.process.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: any("draining in-flight requests" in line for line in gw.process.lines), what="the drain to start")
            gw.process.proc.send_signal(signal.SIGINT)
            chat_seen += list(chat_lines)
            responses_seen += list(responses_lines)
            waiting.join(timeout=30)
        assert gw.process.proc.wait(timeout=20) == 0

        # Not yet answered: 503 shutting_down, retry elsewhere.
        answer = held["answer"]
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "shutting_down" and answer.headers["retry-after"] == "1"

        # The chat stream: what it had, then the error object, then [DONE].
        data = [line[len("data: "):] for line in chat_seen if line.startswith("data: ")]
        assert data[-1] == "[DONE]", chat_seen
        last = json.loads(data[-2])
        assert last["error"]["code"] == "shutting_down", last
        assert any('"first"' in d for d in data), "the text sent before the cut reached the client"

        # The Responses stream: an `error` event numbered after the last one sent.
        events = [(a, b) for a, b in zip(responses_seen, responses_seen[1:]) if a.startswith("event: ")]
        kind, payload = events[-1]
        assert kind == "event: error", events
        error = json.loads(payload[len("data: "):])
        numbers = [json.loads(b[len("data: "):])["sequence_number"] for _, b in events[:-1]]
        assert error["code"] == "shutting_down" and error["sequence_number"] == max(numbers) + 1, (error, numbers)
    finally:
        httpx.post(f"{fake_provider}/control/release")
        gw.stop()
