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


def test_check_and_serve_refuse_a_model_file_cut_short(tmp_path):
    # The real model's first 8 MiB: the header (and chat template) read, the weights are cut.
    truncated = tmp_path / "truncated.gguf"
    with open(MODEL, "rb") as f:
        truncated.write_bytes(f.read(8 << 20))
    cfg = config_with_model(tmp_path, truncated)
    for command in ("check", "serve"):
        r = subprocess.run([str(BIN), command, "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SWITCHYARD_LISTEN": "127.0.0.1:0"})
        assert r.returncode == 1, r.stdout
        assert "is cut short: 8388608 bytes where its tensors need" in r.stderr, r.stderr


def test_serve_stops_with_the_reason_when_the_model_cannot_be_loaded(tmp_path):
    # The whole model with its architecture renamed: header, chat template and tensor data are
    # all there, so `check` passes; llama.cpp knows no architecture "lamal", so loading fails.
    data = bytearray(MODEL.read_bytes())
    key = b"general.architecture"
    value = data.index(key) + len(key) + 4 + 8  # the value's type (u32) and length (u64) first
    assert data[value:value + 5] == b"llama"
    data[value:value + 5] = b"lamal"
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(data)
    cfg = config_with_model(tmp_path, renamed)
    check = subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    serve = subprocess.run([str(BIN), "serve", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SWITCHYARD_LISTEN": "127.0.0.1:0"})
    assert serve.returncode != 0
    assert "the local engine could not start" in serve.stderr and "cannot load" in serve.stderr, serve.stderr


def test_check_refuses_a_chat_model_as_the_embedding_model(tmp_path):
    # llama.cpp would crash the whole process encoding with a decoder: refused before it can.
    cfg = config_with_model(tmp_path, MODEL)
    cfg.write_text(cfg.read_text().replace("[policy]", f'[local_embeddings]\nmodel = "{MODEL}"\n\n[policy]'))
    r = subprocess.run([str(BIN), "check", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout
    assert "local_embeddings.model" in r.stderr and "is not an embedding model" in r.stderr, r.stderr
