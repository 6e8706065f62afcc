"""One tenant's backlog against another's interactive requests on the local engine
(`make bench-fair-share`): tenant "batch" keeps 16 streams in flight on an engine of 4 slots,
tenant "chat" sends one streamed request at a time. Prints time to first token p50/p95 of each
and the engine's throughput, for the binary in SWITCHYARD_BIN (default target/release).
"""

import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("SWITCHYARD_BIN", str(ROOT / "target" / "release" / "switchyard"))

import httpx  # noqa: E402

from conftest import Gateway, gateway_config, new_virtual_key  # noqa: E402

BATCH_STREAMS = 16
CHAT_REQUESTS = int(os.environ.get("BENCH_CHAT_REQUESTS", "12"))


def stream(gw, key, text, max_tokens):
    """Streams one answer; returns (time to first content chunk, completion chunks)."""
    body = {"model": "auto", "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}
    start = time.perf_counter()
    ttft, chunks = None, 0
    with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    return ttft, chunks


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    batch_key, batch_entry = new_virtual_key()
    chat_key, chat_entry = new_virtual_key()
    tenants = (f'[[tenants]]\nname = "batch"\nkeys = ["{batch_entry}"]\n\n'
               f'[[tenants]]\nname = "chat"\nkeys = ["{chat_entry}"]\n')
    gw = Gateway(pathlib.Path(tempfile.mkdtemp()), gateway_config(tenants, context=8192, parallel=4).replace("queue = 16", "queue = 64"))
    stop = threading.Event()
    batch_ttft, batch_chunks = [], [0]
    lock = threading.Lock()

    def batch_worker(n):
        i = 0
        while not stop.is_set():
            ttft, chunks = stream(gw, batch_key, f"Write a long story about ship number {n}-{i}.", 64)
            with lock:
                batch_ttft.append(ttft)
                batch_chunks[0] += chunks
            i += 1

    try:
        stream(gw, chat_key, "Say hello.", 8)  # warm-up: the engine measures its steps
        workers = [threading.Thread(target=batch_worker, args=(n,)) for n in range(BATCH_STREAMS)]
        for w in workers:
            w.start()
        # Let the batch fill the slots and the queue before the interactive requests come.
        while httpx.get(f"{gw.base}/readyz").json()["engine"]["queued"] < BATCH_STREAMS - 4:
            time.sleep(0.05)  # poll interval
        started = time.perf_counter()
        with lock:
            batch_ttft.clear()
            batch_chunks[0] = 0
        chat_ttft = [stream(gw, chat_key, f"What is the capital of country number {i}?", 32)[0] for i in range(CHAT_REQUESTS)]
        elapsed = time.perf_counter() - started
        with lock:
            seen_batch, chunks = list(batch_ttft), batch_chunks[0]
        stop.set()
        for w in workers:
            w.join()
    finally:
        stop.set()
        gw.stop()
    print(f"engine: 4 slots, queue 64; batch keeps {BATCH_STREAMS} streams of 64 tokens in flight; "
          f"chat sends {CHAT_REQUESTS} of 32 tokens one at a time; {os.environ['SWITCHYARD_BIN']}")
    print("| tenant | requests | TTFT p50 ms | TTFT p95 ms |")
    print("|---|---:|---:|---:|")
    print(f"| chat | {len(chat_ttft)} | {statistics.median(chat_ttft) * 1000:.0f} | {pct(chat_ttft, 0.95) * 1000:.0f} |")
    if seen_batch:
        print(f"| batch | {len(seen_batch)} | {statistics.median(seen_batch) * 1000:.0f} | {pct(seen_batch, 0.95) * 1000:.0f} |")
    print(f"batch completion chunks/s while chat ran: {chunks / elapsed:.1f}")


if __name__ == "__main__":
    main()
