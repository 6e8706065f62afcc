"""Fixtures for the Python end-to-end suite: the real switchyard binary, the real model, the
official openai SDK, and the fake provider server (tests/src/bin/fake_provider.rs)."""

import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from schema import Schemas

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_MODEL = ROOT / "models" / "all-MiniLM-L6-v2.f16.gguf"
BIN = Path(os.environ.get("SWITCHYARD_BIN", ROOT / "target" / "release" / "switchyard"))
FAKE_BIN = Path(os.environ.get("FAKE_PROVIDER_BIN", ROOT / "target" / "release" / "fake-provider"))
SPEC = ROOT.parent / "shared" / "openai-openapi" / "openapi.yaml"


class Process:
    """A child process whose output lines are collected; killed by pid on stop()."""

    def __init__(self, args, env=None, marker=None, timeout=30.0):
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, text=True,
        )
        self.lines = []
        self._found = queue.Queue()
        self._marker = marker
        threading.Thread(target=self._read, daemon=True).start()
        self.value = None
        if marker:
            try:
                self.value = self._found.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{args[0]} never printed {marker!r}:\n" + "\n".join(self.lines))

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._marker and self._marker in line:
                self._found.put(line.split(self._marker, 1)[1].split()[0])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def read_head(sock):
    """What a server sends on a raw socket until the end of its response head (or until it
    closes): the head, and whatever of the body came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def wait_ready(base, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("gateway never became ready")


def local_section(context=4096, parallel=4):
    return (
        f'[local]\nmodel = "{MODEL}"\nname = "local-small"\ncontext = {context}\n'
        f"threads = 2\nparallel = {parallel}\nqueue = 16\n"
    )


ALL_LOCAL = '[[rule]]\nname = "default"\nroute = "local"\n'


class Gateway:
    def __init__(self, tmp_path, config, policy=ALL_LOCAL, env=None):
        policy_path = tmp_path / "policy.toml"
        policy_path.write_text(policy)
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(config.replace("{policy}", str(policy_path)))
        self.config_path = config_path
        self.process = Process(
            [str(BIN), "serve", "--config", str(config_path)],
            env={"SWITCHYARD_LISTEN": "127.0.0.1:0", **(env or {})}, marker="addr=",
        )
        self.base = f"http://{self.process.value}"
        self.v1 = f"{self.base}/v1"
        wait_ready(self.base)

    def stop(self):
        self.process.stop()


def embeddings_section(name="local-embed"):
    return f'[local_embeddings]\nmodel = "{EMBED_MODEL}"\nname = "{name}"\nthreads = 2\n'


def gateway_config(extra="", context=4096, parallel=4, embeddings=False):
    embed = embeddings_section() if embeddings else ""
    return f'[server]\nregion = "eu-west"\n\n{local_section(context, parallel)}\n{embed}\n{extra}\n[policy]\nfile = "{{policy}}"\n'


@pytest.fixture(scope="session")
def schemas():
    return Schemas(SPEC)


@pytest.fixture(scope="session")
def fake_provider():
    p = Process([str(FAKE_BIN)], marker="listening on ", timeout=10)
    yield f"http://{p.value}"
    p.stop()


def fake_provider_section(base, key_env=None, name="fake", kind="openai-compatible", region=None, trusted=False,
                          extra_keys="", base_path="/v1"):
    key = f'api_key_env = "{key_env}"\n' if key_env else ""
    where = f'region = "{region}"\n' if region else ""
    # Short backoff so retry tests stay fast; Retry-After from the fake still applies.
    where += f"retry_base_ms = 5\nretry_max_wait_ms = 2000\n{extra_keys}"
    models = ", ".join(
        f'{{ name = "{m}", input_per_mtok = 1.0, output_per_mtok = 2.0 }}'
        for m in ["echo", "shred", "gated", "fail", "ratelimit", "reject", "drop", "judge", "judge-first", "tool", "tool-echo", "tool-bare", "embed", "bare", "reasoner", "strict", "o-series", "metered-legacy"]
    ) + ', { name = "cached", input_per_mtok = 1.0, output_per_mtok = 2.0, cached_input_per_mtok = 0.5 }' \
      + ', { name = "metered", input_per_mtok = 1000.0, output_per_mtok = 2000.0 }'
    return (
        f'[[providers]]\nname = "{name}"\nkind = "{kind}"\nbase_url = "{base}{base_path}"\n{key}{where}'
        f"trusted = {'true' if trusted else 'false'}\ntimeout_ms = 20000\nmodels = [{models}]\n"
    )


def accounting_records(gateway):
    """The gateway's accounting records (log lines `request accounted`), as dicts of strings."""
    out = []
    for line in list(gateway.process.lines):
        if "request accounted" in line:
            fields = re.findall(r'(\w+)=("[^"]*"|\[[^\]]*\]|\S+)', line.split("request accounted", 1)[1])
            out.append({k: v[1:-1] if v.startswith('"') else v for k, v in fields})
    return out


def accounting_record(gateway, request_id, timeout=10.0):
    """The record of one request; streams write theirs when they end, so wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in accounting_records(gateway):
            if r.get("request_id") == request_id:
                return r
        time.sleep(0.02)
    raise AssertionError(f"no accounting record for {request_id}")


def fake_requests(fake_provider):
    """Every request the fake provider has received so far (bodies as sent by the gateway)."""
    return [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json()]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, fake_provider):
    """One shared gateway: the real model locally plus the fake provider as `fake`."""
    gw = Gateway(tmp_path_factory.mktemp("gw"), gateway_config(fake_provider_section(fake_provider), embeddings=True))
    yield gw
    gw.stop()


def sse_events(response):
    """The data payloads of an SSE response, in order."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append(line[len("data: "):])
    return out


def parse_chunks(events):
    return [json.loads(e) for e in events if e != "[DONE]"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own on a free port, stopped (and restartable) by pid."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        for line in self.proc.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on port {self.port} exited before it was ready")
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=lambda out: [None for _ in out], args=(self.proc.stdout,), daemon=True).start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()


@pytest.fixture
def private_redis():
    r = PrivateRedis()
    yield r
    r.stop()


def new_virtual_key():
    """A virtual key and its `sha256:` config entry."""
    import hashlib
    import secrets
    key = "sy-" + secrets.token_hex(32)
    return key, "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def auth_failures(gateway, surface):
    """`switchyard_auth_failures_total{surface}` from /metrics (0 before the first)."""
    m = re.search(rf'^switchyard_auth_failures_total{{surface="{surface}"}} (\d+)', httpx.get(f"{gateway.base}/metrics").text, re.M)
    return int(m.group(1)) if m else 0


def admin_stats(gateway):
    return httpx.get(f"{gateway.base}/admin/stats", timeout=10).json()


def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` until it returns a truthy value (bounded), and returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def remote_only_config(fake_base, extra=""):
    """A gateway without the local engine: everything goes to the fake provider."""
    return f'[server]\nregion = "eu-west"\n\n{fake_provider_section(fake_base)}\n{extra}\n[policy]\nfile = "{{policy}}"\n'
