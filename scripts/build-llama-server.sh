#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the comparison for `make bench-concurrency`) from the llama.cpp
# vendored in the llama-cpp-python sdist, with the same CPU flags as our engine's build
# (no -march=native; AVX2, FMA, F16C). Output: bench/llama-server/llama-server.
set -euo pipefail
VERSION=0.3.36
OUT=bench/llama-server
[ -x "$OUT/llama-server" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$tmp"
tar xzf "$tmp"/llama_cpp_python-$VERSION.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$tmp/build" -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$tmp/build" --target llama-server -j"$(nproc)"
mkdir -p "$OUT"
cp "$tmp/build/bin/llama-server" "$OUT/"
echo "built $OUT/llama-server"
