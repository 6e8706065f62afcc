#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the comparison for `make bench-concurrency`) from the llama.cpp
# vendored in the llama-cpp-python sdist, built as our engine's llama.cpp is: RelWithDebInfo (as
# llama-cpp-sys-2 does; a -O3 Release build of 0.3.36 dies with SIGILL in its AMX kernel here),
# GGML_NATIVE off, and the instruction sets scripts/ggml-cpu-flags.sh finds, which the Makefile
# also hands to llama-cpp-sys-2. Output: bench/llama-server/llama-server and llama-batched-bench
# (the raw decode ceiling: many sequences in one batch, no server), rebuilt when they change.
set -euo pipefail
VERSION=0.3.36
OUT=bench/llama-server
mapfile -t flags < <(bash scripts/ggml-cpu-flags.sh)
# Nothing found (SWITCHYARD_PORTABLE=1, non-x86): ggml's own x86 defaults, as in our engine's build.
stamp="$VERSION RelWithDebInfo ${flags[*]:-ggml-defaults}"
if [ -x "$OUT/llama-server" ] && [ -x "$OUT/llama-batched-bench" ] && [ "$(cat "$OUT/flags" 2>/dev/null)" = "$stamp" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$tmp"
tar xzf "$tmp"/llama_cpp_python-$VERSION.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$tmp/build" -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGGML_NATIVE=OFF \
  "${flags[@]/#/-D}" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$tmp/build" --target llama-server llama-batched-bench -j"$(nproc)"
mkdir -p "$OUT"
cp "$tmp/build/bin/llama-server" "$tmp/build/bin/llama-batched-bench" "$OUT/"
echo "$stamp" > "$OUT/flags"
echo "built $OUT/llama-server and llama-batched-bench ($stamp)"
