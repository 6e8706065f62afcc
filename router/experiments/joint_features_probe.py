"""One-off check (2026-12-07): would the baseline's kinds of signals do better *learned* (weights
fitted on MMLU beside the hashed words) than mixed in with their hand-set weights
(`[classifier] baseline_weight`)? Not part of the gateway or of `make test`; results are in
router/README.md ("Learning the baseline's signals instead of mixing them").

    python3 -m venv /tmp/exp && /tmp/exp/bin/pip install numpy scipy scikit-learn httpx
    /tmp/exp/bin/python router/experiments/joint_features_probe.py

Same data, labels, folds and metrics as minilm_probe.py (and as eval-router); logistic regression
C = 1. The dense columns approximate the baseline's signals in Python (length, stated numbers capped
at 3 and at 10, math symbols, reasoning words, code, several questions, lines), scaled by 1, 3 or
10 so that the L2 penalty weighs on them less than on the words.
"""
import os
import re
import sys

import numpy as np
from scipy.sparse import csr_matrix, hstack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_probe import evaluate, mmlu, mt_bench, protocols  # noqa: E402

REASONING = re.compile(r"\b(prove|proof|derive|explain why|step by step|analy[sz]e|compare|justify|evaluate|design|implement|optimi[sz]e|why)\b", re.I)
NUMBER = re.compile(r"(?<![A-Za-z0-9])\d[\d,.]*")


def signals(text):
    numbers = len(NUMBER.findall(text))
    return [np.log1p(len(text) / 4) / 7, min(numbers, 3) / 3, min(numbers, 10) / 10, bool(re.search(r"[=+\-*/^<>]", text)),
            min(len(REASONING.findall(text)), 3) / 3, "```" in text or "def " in text or "{" in text, text.count("?") > 1,
            text.count("\n") / 20]


def main():
    M, T = mmlu(), mt_bench()
    y, by_question, by_subject, (H, HT) = protocols(M, T)
    F = np.array([signals(i[0]) for i in M], float)
    FT = np.array([signals(i[0]) for i in T], float)
    for scale in (1, 3, 10):
        X = hstack([H, csr_matrix(F * scale)]).tocsr()
        XT = hstack([HT, csr_matrix(FT * scale)]).tocsr()
        print(f"words + signals x{scale}:", evaluate(M, T, y, (by_question, by_subject), X, XT, 1.0, 2000), flush=True)
    print("signals alone:", evaluate(M, T, y, (by_question, by_subject), csr_matrix(F), csr_matrix(FT), 1.0, 2000))
    print("words alone:", evaluate(M, T, y, (by_question, by_subject), H, HT, 1.0, 2000))


if __name__ == "__main__":
    main()
