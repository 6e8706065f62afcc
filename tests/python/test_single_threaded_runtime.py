"""`[server] worker_threads = 1`: the gateway runs on a single-threaded runtime (the default on a
one-core machine) and still serves everything at once — local streams, remote calls, admin
pages — since the engine and embeddings have their own threads."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import Gateway, fake_provider_section, gateway_config

POLICY = ('[[rule]]\nname = "remote"\nwhen.requested_model = "fake/*"\nroute = "fake/echo"\n\n'
          '[[rule]]\nname = "default"\nroute = "local"\n')


@pytest.fixture(scope="module")
def single(tmp_path_factory, fake_provider):
    config = gateway_config(fake_provider_section(fake_provider, trusted=True), parallel=4)
    config = config.replace('[server]\n', '[server]\nworker_threads = 1\n', 1)
    gw = Gateway(tmp_path_factory.mktemp("single"), config, policy=POLICY)
    yield gw
    gw.stop()


def test_the_runtime_is_single_threaded(single):
    assert any("async runtime" in line and "single_threaded=true" in line for line in list(single.process.lines))


def test_local_streams_and_remote_calls_are_served_together(single):
    client = openai.OpenAI(base_url=single.v1, api_key="unused", max_retries=0)

    def local_stream(i):
        stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                                                max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def remote(i):
        r = client.chat.completions.create(model="fake/echo", messages=[{"role": "user", "content": f"ping {i}"}])
        return r.choices[0].message.content

    with ThreadPoolExecutor(12) as pool:
        streams = [pool.submit(local_stream, i) for i in range(6)]
        calls = [pool.submit(remote, i) for i in range(6)]
        # The admin page answers while the engine is busy.
        assert httpx.get(f"{single.base}/healthz", timeout=10).status_code == 200
        texts = [f.result(timeout=120) for f in streams]
        echoes = [f.result(timeout=60) for f in calls]
    assert all(texts)
    assert all(f"ping {i}" in echo for i, echo in enumerate(echoes)), echoes


def test_more_threads_than_sensible_is_refused(tmp_path):
    import subprocess
    from conftest import BIN
    path = tmp_path / "gateway.toml"
    path.write_text('[server]\nworker_threads = 100000\n')
    out = subprocess.run([str(BIN), "check", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "server.worker_threads must be at most 1024" in out.stderr
