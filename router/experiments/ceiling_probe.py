"""One-off check (2026-12-05): how much of MMLU's routing signal is in the subject, and how much
is left within a subject for a prompt-only scorer to find? Not part of the gateway or of
`make test`; results are in router/README.md ("What bounds the MMLU numbers").

    python3 -m venv /tmp/exp && /tmp/exp/bin/pip install numpy scipy scikit-learn httpx
    /tmp/exp/bin/python router/experiments/ceiling_probe.py

Same data, labels, folds and metrics as minilm_probe.py (and as eval-router).
"""
import re
import sys
import os

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_probe import metrics, mmlu, mt_bench, protocols  # noqa: E402


def subject_rates(y, subjects, train):
    """Share of label-1 prompts in each subject, counted on the training prompts only."""
    return {s: y[train & (subjects == s)].mean() for s in set(subjects[train])}


def tie_break(scores, seed=0):
    """Scores of one subject tie; a tiny random term orders them at random, not by file order."""
    return scores + 1e-9 * np.random.default_rng(seed).random(len(scores))


def within_subject_auc(y, subjects, values):
    """ROC AUC of values for the label inside each subject, averaged with each subject weighted by
    its number of (positive, negative) pairs: the signal left once the subject is known."""
    num = den = 0.0
    for s in set(subjects):
        m = subjects == s
        pos = y[m].sum()
        if 0 < pos < m.sum():
            pairs = pos * (m.sum() - pos)
            num += roc_auc_score(y[m], values[m]) * pairs
            den += pairs
    return num / den


def surface_features(text):
    question = re.split(r"\nA\. ", text)[0]
    return {
        "prompt length": len(text),
        "question length (without options)": len(question),
        "digits": sum(c.isdigit() for c in text),
        "math symbols": sum(c in "=+*/^()" for c in text),
        "negation (NOT / EXCEPT / LEAST / FALSE)": float(bool(re.search(r"\b(NOT|EXCEPT|LEAST|FALSE)\b", text))),
        "long words": sum(len(w) > 9 for w in text.split()),
    }


def main():
    M, T = mmlu(), mt_bench()
    y, by_question, by_subject, (H, _) = protocols(M, T)
    subjects = np.array([m[1] for m in M])

    prior = np.zeros(len(M))
    for f in range(5):
        rates = subject_rates(y, subjects, by_question != f)
        prior[by_question == f] = [rates[s] for s in subjects[by_question == f]]
    print("subject known, its rate from the training folds (by question):", metrics(M, tie_break(prior)))
    own = np.array([y[subjects == s].mean() for s in subjects])
    print("subject known, its own rate incl. the test prompts (upper bound):", metrics(M, tie_break(own)))

    classes = sorted(set(subjects))
    label = np.array([classes.index(s) for s in subjects])
    for name, folds in (("by question", by_question), ("by unseen subject", by_subject)):
        two_stage = np.zeros(len(M))
        for f in range(5):
            train = folds != f
            clf = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=30, tol=None, random_state=0)
            clf.fit(H[train], label[train])
            rates = subject_rates(y, subjects, train)
            two_stage[~train] = clf.predict_proba(H[~train]) @ np.array([rates[classes[c]] for c in clf.classes_])
        print(f"words -> subject -> subject's rate ({name}):", metrics(M, two_stage))

    for C in (0.1, 1.0, 10.0):
        words = np.zeros(len(M))
        for f in range(5):
            train = by_question != f
            words[~train] = LogisticRegression(C=C, max_iter=2000).fit(H[train], y[train]).predict_proba(H[~train])[:, 1]
        print(f"hashed word 1-2-grams, logistic regression C={C} (by question):", metrics(M, words),
              f"within-subject AUC {within_subject_auc(y, subjects, words):.3f}")

    feats = [surface_features(m[0]) for m in M]
    for k in feats[0]:
        v = np.array([f[k] for f in feats], dtype=float)
        print(f"{k}: within-subject AUC {within_subject_auc(y, subjects, v):.3f}, across all {roc_auc_score(y, v):.3f}")


if __name__ == "__main__":
    main()
