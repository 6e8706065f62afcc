"""A client that stops reading a stream (a hung process, a stalled proxy) is cut after
`send_timeout_ms`: its request ends as cut by its client (one record, with the tokens it was
sent), the provider's stream is dropped, and its in-flight slot is free for the tenant's next
request — while the stalled socket is still open. A client that reads slowly but steadily is
not cut."""

import json
import socket
import time

import httpx

from conftest import Gateway, accounting_record, accounting_records, remote_only_config


def gateway_with(tmp_path, fake_provider, server_keys):
    config = remote_only_config(fake_provider).replace('[server]\nregion = "eu-west"', '[server]\nregion = "eu-west"\n' + server_keys)
    return Gateway(tmp_path, config, policy='[[rule]]\nname = "all"\nroute = "fake/metered"\n')


def open_long_stream(gw, rcvbuf):
    """A raw socket with a long stream's head read: (socket, request id, bytes received)."""
    host, port = gw.base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    body = json.dumps({"model": "fake/metered", "stream": True, "max_tokens": 400000,
                       "messages": [{"role": "user", "content": "go on"}]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    request_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id:"))
    return sock, request_id, len(head)


def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(tmp_path, fake_provider):
    gw = gateway_with(tmp_path, fake_provider, "send_timeout_ms = 500\nmax_in_flight_per_tenant = 1")
    stalled = None
    try:
        stalled, request_id, _ = open_long_stream(gw, rcvbuf=4096)
        # From here on the client reads nothing, and keeps the socket open.
        record = accounting_record(gw, request_id, timeout=60)
        assert record["status"] == "200", record
        assert 0 < int(record["completion_tokens"]) < 400000, record
        # The tenant's only in-flight slot is free again.
        r = httpx.post(f"{gw.v1}/chat/completions", timeout=30,
                       json={"model": "fake/metered", "max_tokens": 3, "messages": [{"role": "user", "content": "next"}]})
        assert r.status_code == 200, r.text
    finally:
        if stalled:
            stalled.close()
        gw.stop()


def test_a_slow_but_steady_reader_is_not_cut(tmp_path, fake_provider):
    # Reading 64 KB every 100 ms, far slower than the stream is produced: the gateway's writes
    # wait on the client all along, yet each wait ends well within send_timeout_ms (a socket
    # send buffer autotuned to megabytes woke the writer only after ~1.3 MB had drained).
    gw = gateway_with(tmp_path, fake_provider, "send_timeout_ms = 1000")
    reader = None
    try:
        reader, request_id, total = open_long_stream(gw, rcvbuf=65536)
        while total < 3_000_000:
            piece = reader.recv(65536)
            assert piece, f"the gateway cut a client that was reading (after {total} bytes)"
            total += len(piece)
            time.sleep(0.1)
        assert not any(r.get("request_id") == request_id for r in accounting_records(gw)), "the stream ended early"
    finally:
        if reader:
            reader.close()
        gw.stop()
