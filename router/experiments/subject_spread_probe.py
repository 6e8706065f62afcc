"""One-off check (2026-12-05): do hashed word features carry over to unseen MMLU subjects better
if only words seen in several training subjects are kept (a topic-free vocabulary, chosen without
labels)? Not part of the gateway or of `make test`. It does not (router/README.md). Needs the
venv of minilm_probe.py; about 3 minutes on 2 cores.

    /tmp/exp/bin/python router/experiments/subject_spread_probe.py
"""
import os, sys

import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_probe import mmlu, mt_bench, metrics, protocols
from sklearn.linear_model import LogisticRegression
from scipy.sparse import csr_matrix
M, T = mmlu(), mt_bench()
y, byq, bys, (H, HT) = protocols(M, T)
subj = np.array([i[1] for i in M]); names = sorted(set(subj)); sid = np.array([names.index(s) for s in subj])
Hb = (H > 0).astype(np.float32).tocsc()
def spread(rows):
    # number of distinct subjects in which each feature occurs, over `rows`
    sub = Hb[rows]
    S = csr_matrix((np.ones(len(rows)), (np.arange(len(rows)), sid[rows])), shape=(len(rows), len(names)))
    return np.asarray(((sub.T @ S) > 0).sum(1)).ravel()
for k in (0, 3, 6, 12):
    res = []
    for folds in (byq, bys):
        s = np.zeros(len(M))
        for f in range(5):
            tr = np.where(folds != f)[0]; te = np.where(folds == f)[0]
            keep = (spread(tr) >= k).astype(np.float32) if k else np.ones(H.shape[1], np.float32)
            X = H @ csr_matrix((keep, (np.arange(len(keep)), np.arange(len(keep)))), shape=(len(keep),)*2)
            m = LogisticRegression(C=1.0, max_iter=2000).fit(X[tr], y[tr])
            s[te] = m.predict_proba(X[te])[:, 1]
        res.append(metrics(M, s))
    keep = (spread(np.arange(len(M))) >= k).astype(np.float32) if k else np.ones(H.shape[1], np.float32)
    D = csr_matrix((keep, (np.arange(len(keep)), np.arange(len(keep)))), shape=(len(keep),)*2)
    m = LogisticRegression(C=1.0, max_iter=2000).fit(H @ D, y)
    res.append(metrics(T, m.predict_proba(HT @ D)[:, 1]))
    print(f"min subjects {k:2}: byq {res[0]} bysubj {res[1]} MT {res[2]}", flush=True)
