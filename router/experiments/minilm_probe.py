"""One-off check (2026-12-05): would sentence embeddings route better than the learned scorer's
word features? Not part of the gateway or of `make test`.

Embeds every MMLU and MT Bench prompt with all-MiniLM-L6-v2 through a running gateway's
POST /v1/embeddings ([local_embeddings] as in config/gateway.toml, listening on 127.0.0.1:18090),
then fits scikit-learn logistic regressions on the embeddings, on hashed word 1-2-grams, and on
both, under the eval-router protocols (MMLU 5-fold by question and by unseen subject; MT Bench
scored by a model trained on MMLU only). Results are in router/README.md.

    python3 -m venv /tmp/exp && /tmp/exp/bin/pip install numpy scipy scikit-learn httpx
    SWITCHYARD_LISTEN=127.0.0.1:18090 target/release/switchyard serve --config config/gateway.toml &
    /tmp/exp/bin/python router/experiments/minilm_probe.py
"""
import csv, glob, json, os, sys, time

import httpx
import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/datasets/routellm")
def contaminated(p):
    return {json.loads(l)["eval_prompt"].strip() for l in open(p) if l.strip() and "eval_prompt" in json.loads(l)}
def mmlu():
    skip = contaminated(f"{D}/mmlu/contaminated_prompts.jsonl")
    items = []
    for f in sorted(glob.glob(f"{D}/mmlu/responses/*.csv")):
        subj = os.path.basename(f)[:-4].removeprefix("mmlu_")
        for row in list(csv.reader(open(f)))[1:]:
            if row[0].strip() in skip: continue
            items.append((row[0], subj, float(row[1]=="True"), float(row[2]=="True")))
    return items
def mt_bench():
    skip = contaminated(f"{D}/mt_bench/contaminated_prompts.jsonl")
    sc = {}
    for l in open(f"{D}/mt_bench/judgements.jsonl"):
        j = json.loads(l)
        if j.get("score") is None: continue
        sc.setdefault((j["question_id"], j["model"].startswith("gpt-4")), []).append(j["score"])
    items = []
    for l in open(f"{D}/mt_bench/question.jsonl"):
        q = json.loads(l); t = q["turns"][0]
        if t.strip() in skip: continue
        k0, k1 = (q["question_id"], False), (q["question_id"], True)
        if k0 in sc and k1 in sc:
            items.append((t, q["category"], np.mean(sc[k0]), np.mean(sc[k1])))
    return items
def metrics(items, scores):
    weak = np.array([i[2] for i in items]); strong = np.array([i[3] for i in items])
    order = np.argsort(-np.asarray(scores), kind="stable")
    gap = strong.sum() - weak.sum()
    pgr = np.concatenate([[0], np.cumsum((strong - weak)[order]) / gap])
    apgr = ((pgr[1:] + pgr[:-1]) / 2).sum() / len(items)
    y = (strong > weak).astype(int)
    return round(float(apgr), 3), round(float(roc_auc_score(y, scores)), 3)

def protocols(M, T):
    """Labels (strong right where weak is wrong), the fold of each MMLU prompt by question and by
    subject (as eval-router deals them), and hashed word 1-2-grams of MMLU and MT Bench."""
    y = np.array([float(i[3] > i[2]) for i in M])
    subjects = sorted({i[1] for i in M})
    fold_of_subject = {s: k % 5 for k, s in enumerate(subjects)}
    by_question = np.random.default_rng(7).integers(0, 5, len(M))
    by_subject = np.array([fold_of_subject[i[1]] for i in M])
    hv = HashingVectorizer(ngram_range=(1, 2), n_features=2**18, alternate_sign=False, norm="l2")
    return y, by_question, by_subject, (hv.transform([i[0] for i in M]), hv.transform([i[0] for i in T]))


def evaluate(M, T, y, fold_sets, X, XT, C, max_iter):
    """(APGR, AUC) of a logistic regression on features X under each MMLU fold assignment (each
    prompt scored by a model trained on the other folds), then on MT Bench (XT) by one trained on
    all of MMLU."""
    res = []
    for folds in fold_sets:
        s = np.zeros(len(M))
        for f in range(5):
            m = LogisticRegression(C=C, max_iter=max_iter).fit(X[folds != f], y[folds != f])
            s[folds == f] = m.predict_proba(X[folds == f])[:, 1]
        res.append(metrics(M, s))
    res.append(metrics(T, LogisticRegression(C=C, max_iter=max_iter).fit(X, y).predict_proba(XT)[:, 1]))
    return res


def embed(items, client):
    """Mean-pooled MiniLM embeddings; a prompt over its 512 tokens is cut until it fits."""
    texts = [i[0] for i in items]
    out = []
    for k in range(0, len(texts), 32):
        batch = texts[k:k + 32]
        r = client.post("/embeddings", json={"model": "local-embed", "input": batch})
        if r.status_code == 200:
            out += [d["embedding"] for d in r.json()["data"]]
            continue
        for t in batch:
            n = len(t)
            while True:
                r1 = client.post("/embeddings", json={"model": "local-embed", "input": [t[:n]]})
                if r1.status_code == 200:
                    break
                n = int(n * 0.8)
            out.append(r1.json()["data"][0]["embedding"])
    return np.array(out, dtype=np.float32)


def main():
    client = httpx.Client(base_url="http://127.0.0.1:18090/v1", timeout=600, headers={"authorization": "Bearer x"})
    M, T = mmlu(), mt_bench()
    started = time.time()
    E, ET = embed(M, client), embed(T, client)
    print(f"embedded {len(M) + len(T)} prompts in {time.time() - started:.0f} s", flush=True)
    y, by_question, by_subject, (H, HT) = protocols(M, T)
    kinds = {"ngram": (H, HT), "emb": (E, ET), "both": (hstack([csr_matrix(E), H]).tocsr(), hstack([csr_matrix(ET), HT]).tocsr())}
    for kind, (X, XT) in kinds.items():
        for C in (0.3, 1.0, 3.0):
            res = evaluate(M, T, y, (by_question, by_subject), X, XT, C, max_iter=2000)
            print(f"{kind:5} C={C}: (APGR, AUC) by question {res[0]}, by unseen subject {res[1]}, MT Bench {res[2]}", flush=True)


if __name__ == "__main__":
    main()
