"""A `[local]` model the engine cannot serve: `check` refuses a file that is not a GGUF chat
model, and `serve` stops with the reason when the model cannot be loaded, rather than staying
"loading" (never ready) while every chat request fails."""

import os
import subprocess

from conftest import BIN, EMBED_MODEL, MODEL, ROOT


def config_with_model(tmp_path, model):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "default"\nroute = "local"\n')
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[server]\nregion = "eu-west"\n\n[local]\nmodel = "{model}"\ncontext = 512\nthreads = 2\n\n[policy]\nfile = "{policy}"\n')
    return cfg


def test_check_refuses_a_local_model_that_is_not_a_gguf_chat_model(tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model\n")
    for model, why in [(notes, "is not a readable GGUF file"), (EMBED_MODEL, "has no tokenizer.chat_template")]:
        r = subprocess.run([str(BIN), "check", "--config", str(config_with_model(tmp_path, model))], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stdout
        assert why in r.stderr and "it must be a GGUF chat model" in r.stderr, r.stderr


def test_serve_stops_with_the_reason_when_the_model_cannot_be_loaded(tmp_path):
    # The real model's first 8 MiB: the header (and chat template) read, so `check` passes; the
    # weights are cut, so loading fails.
    truncated = tmp_path / "truncated.gguf"
    with open(MODEL, "rb") as f:
        truncated.write_bytes(f.read(8 << 20))
    cfg = config_with_model(tmp_path, truncated)
    assert subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, timeout=60).returncode == 0
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SWITCHYARD_LISTEN": "127.0.0.1:0"})
    assert serve.returncode != 0
    assert "the local engine could not start" in serve.stderr and "cannot load" in serve.stderr, serve.stderr
