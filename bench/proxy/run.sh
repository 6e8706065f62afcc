#!/usr/bin/env bash
# Proxy overhead: the same fixed chat.completion answered by an upstream (nginx `return 200` on
# core 1), called by wrk (core 1) directly, through nginx `proxy_pass`, through Switchyard (full
# path: key auth, limits, PII scan + classification, policy, accounting) and through LiteLLM's
# proxy (one worker) — every proxy pinned to core 0. Concurrency 1 and 16; then the time to the
# first byte of a streamed answer. Prints a markdown table (also written to results.md).
#
#   bash bench/proxy/run.sh [seconds per cell, default 10]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DUR=${1:-10}
WORK=$(mktemp -d)
BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
LITELLM=${LITELLM_BIN:-$ROOT/.venv-litellm/bin/litellm}
UP=18101 NGX=18102 SY=18103 LL=18104
KEY=sy-bench-proxy-key
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

ANSWER='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A prince avenges his father and almost everyone dies.","refusal":null},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":20,"completion_tokens":12,"total_tokens":32}}'
STREAM='data: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[{"index":0,"delta":{"role":"assistant","content":"A prince"},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":2,"total_tokens":22}}\n\ndata: [DONE]\n\n'

# The upstream: fixed answers; streams from their own path.
cat > "$WORK/upstream.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/upstream.pid; error_log $WORK/upstream.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$UP; keepalive_requests 1000000;
    location = /v1/chat/completions { default_type application/json; return 200 '$ANSWER'; }
    location = /stream/v1/chat/completions { default_type text/event-stream; return 200 '$STREAM'; } } }
NGINX
cat > "$WORK/proxy.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/proxy.pid; error_log $WORK/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
NGINX
taskset -c 1 nginx -c "$WORK/upstream.conf" -p "$WORK" & pids+=($!)
taskset -c 0 nginx -c "$WORK/proxy.conf" -p "$WORK" & pids+=($!)

HASH="sha256:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
cat > "$WORK/policy.toml" <<TOML
[[rule]]
name = "stream"
when.requested_model = "up-stream/*"
route = "up-stream/bench"

[[rule]]
name = "all"
route = "up/bench"
TOML
cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$SY"
region = "eu-west"

[[providers]]
name = "up"
kind = "openai-compatible"
base_url = "http://127.0.0.1:$UP/v1"
trusted = true
max_retries = 0
models = [{ name = "bench", input_per_mtok = 1.0, output_per_mtok = 2.0 }]

[[providers]]
name = "up-stream"
kind = "openai-compatible"
base_url = "http://127.0.0.1:$UP/stream/v1"
trusted = true
max_retries = 0
models = [{ name = "bench", input_per_mtok = 1.0, output_per_mtok = 2.0 }]

[[tenants]]
name = "bench"
keys = ["$HASH"]
rate_limit = { rpm = 100000000, tpm = 1000000000 }

[policy]
file = "$WORK/policy.toml"
TOML
SWITCHYARD_LOG=warn taskset -c 0 "$BIN" serve --config "$WORK/gateway.toml" > "$WORK/switchyard.log" 2>&1 & pids+=($!)

have_litellm=0
if [ -x "$LITELLM" ]; then
  have_litellm=1
  cat > "$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: bench
    litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:$UP/v1", api_key: "x" }
  - model_name: bench-stream
    litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:$UP/stream/v1", api_key: "x" }
general_settings: { master_key: "$KEY" }
litellm_settings: { telemetry: false }
YAML
  LITELLM_LOG=ERROR taskset -c 0 "$LITELLM" --config "$WORK/litellm.yaml" --port $LL --num_workers 1 > "$WORK/litellm.log" 2>&1 & pids+=($!)
fi

wait_up() { for _ in $(seq 1 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
wait_up "http://127.0.0.1:$UP/v1/chat/completions"; wait_up "http://127.0.0.1:$NGX/v1/chat/completions"
wait_up "http://127.0.0.1:$SY/healthz"
[ $have_litellm = 1 ] && { wait_up "http://127.0.0.1:$LL/health/liveliness" || have_litellm=0; }

script() { sed -e "s/BENCH_KEY/$KEY/" -e "s/MODEL/$1/" bench/proxy/post.lua > "$WORK/$1.lua"; echo "$WORK/$1.lua"; }
# wrk prints "Requests/sec: N" and, with --latency, "50% 1.23ms" / "99% 4.56ms".
to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v*1000 } else { sub(/s$/,"",v); print v*1000000 } }'; }
measure() { # url model conns -> "rps p50_us p99_us"
  local out; out=$(taskset -c 1 wrk -t1 -c"$3" -d"${DUR}s" --latency -s "$(script "$2")" "$1" 2>&1)
  if echo "$out" | grep -q "Non-2xx"; then echo "non-2xx answers from $1: $(echo "$out" | grep Non-2xx)" >&2; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
  echo "$rps $p50 $p99"
}
ttfb() { # url model -> "p50_us p99_us" over 300 streamed requests, each on a new connection
  local body="{\"model\":\"$2\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Summarise Hamlet.\"}]}"
  for _ in $(seq 1 300); do
    taskset -c 1 curl -s -o /dev/null -w '%{time_starttransfer}\n' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$body" "$1"
  done | sort -n | awk '{ a[NR]=$1 } END { printf "%d %d\n", a[int(NR*0.5)]*1e6, a[int(NR*0.99)]*1e6 }'
}

{
echo "| path | in flight | req/s | p50 µs | p99 µs | added p50 µs | added p99 µs |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for c in 1 16; do
  read -r drps dp50 dp99 < <(measure "http://127.0.0.1:$UP/v1/chat/completions" bench $c)
  echo "| direct | $c | $drps | $dp50 | $dp99 | – | – |"
  rows=("nginx proxy_pass|http://127.0.0.1:$NGX/v1/chat/completions|bench" "Switchyard|http://127.0.0.1:$SY/v1/chat/completions|auto")
  [ $have_litellm = 1 ] && rows+=("LiteLLM (1 worker)|http://127.0.0.1:$LL/v1/chat/completions|bench")
  for row in "${rows[@]}"; do
    IFS='|' read -r name url model <<< "$row"
    read -r rps p50 p99 < <(measure "$url" "$model" $c)
    echo "| $name | $c | $rps | $p50 | $p99 | $(awk "BEGIN{print $p50-$dp50}") | $(awk "BEGIN{print $p99-$dp99}") |"
  done
done
echo
echo "| streamed, time to first byte (new connection each) | p50 µs | p99 µs | added p50 µs | added p99 µs |"
echo "|---|---:|---:|---:|---:|"
read -r d50 d99 < <(ttfb "http://127.0.0.1:$UP/stream/v1/chat/completions" bench)
echo "| direct | $d50 | $d99 | – | – |"
srows=("nginx proxy_pass|http://127.0.0.1:$NGX/stream/v1/chat/completions|bench" "Switchyard|http://127.0.0.1:$SY/v1/chat/completions|up-stream/bench")
[ $have_litellm = 1 ] && srows+=("LiteLLM (1 worker)|http://127.0.0.1:$LL/v1/chat/completions|bench-stream")
for row in "${srows[@]}"; do
  IFS='|' read -r name url model <<< "$row"
  read -r p50 p99 < <(ttfb "$url" "$model")
  echo "| $name | $p50 | $p99 | $((p50-d50)) | $((p99-d99)) |"
done
} | tee bench/proxy/results.md
