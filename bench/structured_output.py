"""Single-stream decode rate of the local model with and without grammar-constrained sampling
(`make bench-structured`): the same prompts, greedy, 96 tokens, plain text vs `json_object` vs a
`json_schema`. Prints a markdown table (median of 5 requests per row)."""

import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("SWITCHYARD_BIN", str(ROOT / "target" / "release" / "switchyard"))

import httpx  # noqa: E402

from conftest import Gateway, gateway_config  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 200},
                                           "story": {"type": "string", "maxLength": 400}}, "required": ["name", "story"]}
ROWS = [("plain text", {}), ("json_object", {"response_format": {"type": "json_object"}}),
        ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}})]


def rate(gw, extra, n=5):
    rates = []
    for i in range(n):
        body = {"model": "auto", "messages": [{"role": "user", "content": f"Tell a story about dragon number {i}."}],
                "max_tokens": 96, "temperature": 0, **extra}
        start = time.perf_counter()
        r = httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=120).json()
        rates.append(r["usage"]["completion_tokens"] / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    gw = Gateway(pathlib.Path(tempfile.mkdtemp()), gateway_config())
    try:
        rate(gw, {}, 1)  # warm-up
        print("| output | completion tok/s (single stream, incl. prefill) |\n|---|---:|")
        for name, extra in ROWS:
            print(f"| {name} | {rate(gw, extra):.1f} |")
    finally:
        gw.stop()


if __name__ == "__main__":
    main()
