"""A request refused before its body is read (a wrong key, a compressed body) leaves its
keep-alive connection usable: a small body is read and dropped, so the client's next request on
the connection is answered; a large or late one is refused with `Connection: close`, so the
client knows not to send another on it (hyper closes it either way)."""

import socket

import pytest

from conftest import Gateway, new_virtual_key, read_head, remote_only_config


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, fake_provider):
    _, entry = new_virtual_key()
    config = remote_only_config(fake_provider, f'[[tenants]]\nname = "acme"\nkeys = ["{entry}"]\n')
    gw = Gateway(tmp_path_factory.mktemp("keyed"), config, '[[rule]]\nname = "default"\nroute = "fake/echo"\n')
    yield gw
    gw.stop()


def read_response(sock):
    """One HTTP/1.1 response: (status, headers, body); None when the server closed the connection."""
    data = read_head(sock)
    if b"\r\n\r\n" not in data:
        return None
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def head(gw, path, length, extra=""):
    host = gw.base.removeprefix("http://")
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sy-not-a-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def connect(gw):
    host, port = gw.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    # Each write goes out at once (as HTTP clients set it), not held for the last one's ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_wrong_key_refusals_keep_the_connection(keyed):
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * 100 + b'"}]}'
    with connect(keyed) as sock:
        for _ in range(200):
            # The head and the body in separate writes, as clients often send them.
            sock.sendall(head(keyed, "/v1/chat/completions", len(body)))
            sock.sendall(body)
            answer = read_response(sock)
            assert answer is not None, "the connection was closed under the client"
            status, headers, _ = answer
            assert status == 401 and headers.get("connection") != "close", (status, headers)
        # A compressed body is refused the same way, and the connection still serves.
        sock.sendall(head(keyed, "/v1/chat/completions", len(body), "Content-Encoding: gzip\r\n") + body)
        status, headers, _ = read_response(sock)
        assert status in (401, 415) and headers.get("connection") != "close", (status, headers)
        sock.sendall("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("case", ["over 64 KiB", "expects 100-continue", "never sent"])
def test_a_body_not_read_is_refused_with_connection_close(keyed, case):
    # A body too large to drain, one the client holds back until told to continue (it need not
    # send it at all: the answer comes without a `100 Continue`), or one that does not come
    # within a moment: the 401 says the connection closes after it.
    length, extra = {"over 64 KiB": (512 * 1024, ""), "expects 100-continue": (100, "Expect: 100-continue\r\n"),
                     "never sent": (100, "")}[case]
    with connect(keyed) as sock:
        sock.sendall(head(keyed, "/v1/chat/completions", length, extra))
        status, headers, _ = read_response(sock)
        assert status == 401 and headers.get("connection") == "close", (status, headers)
        assert read_response(sock) is None, "closed after the answer"
