"""One-off check (2026-12-05): does a *static* distillation of all-MiniLM-L6-v2 (Model2Vec-style:
one vector per WordPiece token, averaged over the prompt; microseconds per prompt) keep what the
full encoder gained on unseen MMLU subjects (0.604 APGR against 0.515 for words, see
minilm_probe.py)? Not part of the gateway or of `make test`. Results are in router/README.md:
it does not (0.52-0.54 by unseen subject, MT Bench 0.66-0.68), so the learned scorer stays on
hashed words.

Runs MiniLM in numpy straight from the GGUF that `make embedding-model` fetches (checked here
against the gateway's /v1/embeddings: cosine 0.99999 on sample sentences), embeds each of the
30,522 vocabulary tokens alone as [CLS] token [SEP] (mean-pooled), optionally projects with PCA,
then fits scikit-learn logistic regressions on the mean token vector (plus log length) under
the eval-router protocols. About 2 minutes to distil and 10 to fit, on 2 cores.

    python3 -m venv /tmp/exp && /tmp/exp/bin/pip install numpy scipy scikit-learn tokenizers gguf
    /tmp/exp/bin/python router/experiments/static_minilm_probe.py
"""
import os, sys, tempfile

import numpy as np
from gguf import GGUFReader
from scipy.special import erf
from scipy.sparse import csr_matrix, hstack
from tokenizers import BertWordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from minilm_probe import evaluate, mmlu, mt_bench, protocols  # noqa: E402

reader = GGUFReader(os.path.join(HERE, "../../models/all-MiniLM-L6-v2.f16.gguf"))
W = {t.name: np.array(t.data, dtype=np.float32).reshape(list(reversed(t.shape.tolist())) if len(t.shape) > 1 else -1)
     for t in reader.tensors}
field = reader.fields["tokenizer.ggml.tokens"]
# llama.cpp's GGUF marks word starts with U+2581 and drops WordPiece's "##": undo both.
vocab = [bytes(field.parts[i]).decode() for i in field.data]
vocab = [t[1:] if t.startswith("\u2581") else t if t.startswith("[") and t.endswith("]") else "##" + t for t in vocab]


def layer_norm(x, w, b):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-12) * w + b


def linear(x, w, b):
    return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0]) + b


def encode(ids):
    """BERT forward pass: token ids [batch, length] -> hidden states [batch, length, 384]."""
    B, L = ids.shape
    x = W["token_embd.weight"][ids] + W["position_embd.weight"][:L][None] + W["token_types.weight"][0][None, None]
    x = layer_norm(x, W["token_embd_norm.weight"], W["token_embd_norm.bias"])
    for l in range(6):
        p = f"blk.{l}."
        q, k, v = (linear(x, W[p + f"attn_{n}.weight"], W[p + f"attn_{n}.bias"]).reshape(B, L, 12, 32).transpose(0, 2, 1, 3) for n in "qkv")
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(32)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = linear((a @ v).transpose(0, 2, 1, 3).reshape(B, L, 384), W[p + "attn_output.weight"], W[p + "attn_output.bias"])
        x = layer_norm(x + o, W[p + "attn_output_norm.weight"], W[p + "attn_output_norm.bias"])
        h = linear(x, W[p + "ffn_up.weight"], W[p + "ffn_up.bias"])
        h = linear(0.5 * h * (1 + erf(h / np.sqrt(2))), W[p + "ffn_down.weight"], W[p + "ffn_down.bias"])
        x = layer_norm(x + h, W[p + "layer_output_norm.weight"], W[p + "layer_output_norm.bias"])
    return x


def main():
    static = np.zeros((len(vocab), 384), np.float32)
    for s in range(0, len(vocab), 2048):
        ids = np.arange(s, min(len(vocab), s + 2048))
        static[ids] = encode(np.stack([np.full_like(ids, 101), ids, np.full_like(ids, 102)], 1)).mean(1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertWordPieceTokenizer(f.name, lowercase=True, strip_accents=True, clean_text=True)
    M, T = mmlu(), mt_bench()
    IM, IT = ([e.ids[1:-1] for e in tok.encode_batch([i[0] for i in items])] for items in (M, T))
    y, by_question, by_subject, (H, HT) = protocols(M, T)
    df = np.zeros(len(vocab))
    for t in IM + IT:
        df[list(set(t))] += 1
    idf = np.log((len(IM) + len(IT) + 1) / (df + 1))
    lengths = [np.log1p([[len(t)] for t in I]) for I in (IM, IT)]
    mean = static.mean(0)
    _, _, vt = np.linalg.svd(static - mean, full_matrices=False)

    def pooled(P, w, I):
        out = np.zeros((len(I), P.shape[1]), np.float32)
        for k, t in enumerate(I):
            if t:
                out[k] = (P[t] * w[t][:, None]).sum(0) / w[t].sum()
        return out

    def run(name, X, XT, C):
        res = evaluate(M, T, y, (by_question, by_subject), X, XT, C, max_iter=3000)
        print(f"{name:32} C={C}: (APGR, AUC) by question {res[0]}, by unseen subject {res[1]}, MT Bench {res[2]}", flush=True)

    for dims in (384, 128):
        P = (static - mean) @ vt[:dims].T if dims < 384 else static - mean
        for wname, w in (("uniform", np.ones(len(vocab))), ("idf", idf)):
            E, ET = pooled(P, w, IM), pooled(P, w, IT)
            scale = E.std(0) + 1e-6
            X, XT = np.hstack([E / scale, lengths[0]]), np.hstack([ET / scale, lengths[1]])
            for C in (0.1, 1.0):
                run(f"static d={dims} {wname}", X, XT, C)
            if dims == 128 and wname == "uniform":
                run(f"static d={dims} {wname} + words", hstack([csr_matrix(X * 0.1), H]).tocsr(), hstack([csr_matrix(XT * 0.1), HT]).tocsr(), 1.0)


if __name__ == "__main__":
    main()
