"""One-off check (2026-12-05): does self-labelled data (is the local model's answer right?) help
the prompt-only scorer? Not part of the gateway or of `make test`.

1. Labels: reasoning-gym generators (PyPI `reasoning-gym`, fixed seed; `gsm_symbolic` left out,
   since its templates come from GSM8K's test set) give auto-checkable items; SmolLM2-135M answers
   each greedily through a running gateway (64 tokens at most) and the item is labelled 1 when no
   reading of the answer (whole text, first or last line, first or last number or word) is
   scored right by the generator's own `score_answer`.
2. Evaluation, with the features and protocols of minilm_probe.py (hashed word 1-2-grams,
   logistic regression): how well the prompt predicts the local model's failure on task
   families it never saw; and whether adding these labels to MMLU's moves the MMLU and MT Bench
   figures. Results are in router/README.md.

    python3 -m venv /tmp/exp && /tmp/exp/bin/pip install numpy scipy scikit-learn httpx reasoning-gym
    SWITCHYARD_LISTEN=127.0.0.1:18090 target/release/switchyard serve --config config/gateway.toml &
    /tmp/exp/bin/python router/experiments/selflabel_probe.py
"""
import json, os, re, sys, time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import reasoning_gym
from scipy.sparse import vstack
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_probe import metrics, mmlu, mt_bench, protocols  # noqa: E402

FAMILIES = [
    "basic_arithmetic", "chain_sum", "decimal_arithmetic", "decimal_chain_sum", "products", "gcd", "lcm",
    "power_function", "prime_factorization", "fraction_simplification", "simple_equations", "count_bits",
    "base_conversion", "leg_counting", "letter_counting", "number_sorting", "number_filtering", "spell_backward",
    "word_sorting", "word_sequence_reversal", "caesar_cipher", "family_relationships", "syllogism",
    "propositional_logic", "time_intervals", "calendar_arithmetic", "aiw", "coin_flip", "dice", "knights_knaves",
    "number_format", "count_primes", "complex_arithmetic", "bitwise_arithmetic", "letter_jumble", "string_insertion",
    "needle_haystack", "sentence_reordering", "simple_geometry", "course_schedule",
]
PER_FAMILY = 40
LABELS = "/tmp/selflabels.jsonl"
SANITY = [
    "Hi", "Say hello to my friend.", "What is the capital of France?", "Write a haiku about autumn.",
    "Prove that there are infinitely many primes, step by step.",
    "A train leaves at 3pm going 60 mph and another at 4pm going 80 mph. When does the second catch up?",
    "Implement a lock-free queue in Rust and analyze its memory ordering.",
]


def candidates(text):
    text = text.strip()
    lines = [l.strip() for l in text.splitlines() if l.strip()] or [""]
    nums = re.findall(r"-?\d+(?:[.,/]\d+)*", text)
    words = re.findall(r"[A-Za-z][A-Za-z-]*", text)
    c = [text, lines[0], lines[-1]] + nums[:1] + nums[-1:] + words[:1] + words[-1:]
    return [x.strip(" .:*`\"'") for x in c]


def score(ds, answer, entry):
    """The generator's own score; some scorers raise on unparsable text, which is a wrong answer."""
    try:
        return ds.score_answer(answer, entry)
    except Exception:  # noqa: BLE001
        return 0.0


def label_items():
    if os.path.exists(LABELS):
        return [json.loads(l) for l in open(LABELS)]
    items = []
    for name in FAMILIES:
        try:
            ds = reasoning_gym.create_dataset(name, size=PER_FAMILY, seed=20261205)
            items += [(name, ds, e) for e in ds]
        except Exception as ex:  # a generator that needs extra packages is skipped, and said so
            print(f"skipped {name}: {ex}", flush=True)
    client = httpx.Client(base_url="http://127.0.0.1:18090/v1", timeout=600)

    def ask(item):
        name, ds, e = item
        r = client.post("/chat/completions", json={
            "model": "local-small", "temperature": 0, "seed": 1, "max_tokens": 64,
            "messages": [{"role": "user", "content": e["question"]}]})
        answer = r.json()["choices"][0]["message"]["content"]
        right = any(score(ds, c, e) >= 0.99 for c in candidates(answer))
        return {"prompt": e["question"], "family": name, "label": int(not right), "answer": answer}

    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(ask, items))
    print(f"answered {len(out)} items in {time.time() - started:.0f} s", flush=True)
    with open(LABELS, "w") as f:
        for o in out:
            f.write(json.dumps(o) + "\n")
    return out


def main():
    S = label_items()
    fams = sorted({s["family"] for s in S})
    ys = np.array([s["label"] for s in S], dtype=float)
    print(f"{len(S)} items in {len(fams)} families; local model right on {100 * (1 - ys.mean()):.1f} %")
    for f in fams:
        v = [s["label"] for s in S if s["family"] == f]
        print(f"  {f:26} right {100 * (1 - np.mean(v)):5.1f} %")
    hv = HashingVectorizer(ngram_range=(1, 2), n_features=2**18, alternate_sign=False, norm="l2")
    XS = hv.transform([s["prompt"] for s in S])

    # Within the self-labelled items: does the prompt predict the local model's failure on
    # families it never saw (5 folds of families), and on unseen items of known families?
    fam_fold = {f: k % 5 for k, f in enumerate(fams)}
    by_family = np.array([fam_fold[s["family"]] for s in S])
    by_item = np.random.default_rng(7).integers(0, 5, len(S))
    for title, folds in (("unseen items", by_item), ("unseen families", by_family)):
        sc = np.zeros(len(S))
        for k in range(5):
            tr = folds != k
            sc[folds == k] = LogisticRegression(C=1.0, max_iter=2000).fit(XS[tr], ys[tr]).predict_proba(XS[folds == k])[:, 1]
        print(f"self-labels, {title}: AUC {roc_auc_score(ys, sc):.3f}")
    lengths = np.array([len(s["prompt"]) for s in S])
    print(f"self-labels, prompt length alone: AUC {roc_auc_score(ys, lengths):.3f}")
    # The gateway's own complexity (POST /v1/route): the default baseline scorer on :18090, and
    # the shipped MMLU-trained model/complexity.json on :18091 when a second gateway runs there.
    for port, title in ((18090, "baseline scorer (default)"), (18091, "learned scorer (MMLU-trained)")):
        try:
            route = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=60)
            sc = np.array([route.post("/route", json={"model": "auto", "messages": [{"role": "user", "content": s["prompt"]}]}).json()["complexity"] for s in S])
        except httpx.ConnectError:
            continue
        per_family = [roc_auc_score(ys[m], sc[m]) for f in fams if 0 < ys[(m := np.array([s["family"] == f for s in S]))].mean() < 1]
        print(f"self-labels, {title} via /v1/route: AUC {roc_auc_score(ys, sc):.3f} (within families, mean of {len(per_family)}: {np.mean(per_family):.3f})")

    # Transfer: MMLU (strong right, weak wrong) with and without the self-labels in training.
    M, T = mmlu(), mt_bench()
    y, by_question, by_subject, (H, HT) = protocols(M, T)
    XSAN = hv.transform(SANITY)
    for w in (0.0, 1.0):
        res = []
        for folds in (by_question, by_subject):
            s = np.zeros(len(M))
            for k in range(5):
                tr = folds != k
                X = vstack([H[tr], XS]) if w else H[tr]
                yy = np.concatenate([y[tr], ys]) if w else y[tr]
                s[folds == k] = LogisticRegression(C=1.0, max_iter=2000).fit(X, yy).predict_proba(H[folds == k])[:, 1]
            res.append(metrics(M, s))
        X = vstack([H, XS]) if w else H
        yy = np.concatenate([y, ys]) if w else y
        model = LogisticRegression(C=1.0, max_iter=2000).fit(X, yy)
        res.append(metrics(T, model.predict_proba(HT)[:, 1]))
        sanity = ", ".join(f"{p[:24]!r} {v:.2f}" for p, v in zip(SANITY, model.predict_proba(XSAN)[:, 1]))
        print(f"MMLU{' + self-labels' if w else ''}: (APGR, AUC) by question {res[0]}, by unseen subject {res[1]}, MT Bench {res[2]}")
        print(f"   sanity: {sanity}")
    only = LogisticRegression(C=1.0, max_iter=2000).fit(XS, ys)
    print(f"self-labels only: MMLU (all) {metrics(M, only.predict_proba(H)[:, 1])}, MT Bench {metrics(T, only.predict_proba(HT)[:, 1])}")
    sanity = ", ".join(f"{p[:24]!r} {v:.2f}" for p, v in zip(SANITY, only.predict_proba(XSAN)[:, 1]))
    print(f"   sanity: {sanity}")


if __name__ == "__main__":
    main()
