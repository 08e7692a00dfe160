"""Reference figures over seeds and between methods, for the compare parity test.

  stats_ref.py CASES.json OUT.json

CASES: {"spreads": [[score per run, ...], ...],
        "paired": [{"truth": [...], "a": [[pred per item] per seed], "b": [...], "resamples": B}]}.
OUT: for each spread, n, mean, the sample standard deviation (ddof=1) and the 95 % interval
of the mean from scipy's Student's t; for each paired case, the mean over seeds of
scikit-learn's macro F1 of a minus b, and a paired bootstrap over items with numpy's own
generator (the same draw of items for every seed and both methods): the 2.5th and 97.5th
percentiles and the two-sided p-value 2 * (1 + min(#d <= 0, #d >= 0)) / (B + 1), at most 1.
"""
import json
import sys

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score

cases = json.load(open(sys.argv[1]))
spreads = []
for values in cases["spreads"]:
    v = np.array(values, dtype=float)
    n = len(v)
    sd = float(v.std(ddof=1))
    lo, hi = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=sd / np.sqrt(n))
    spreads.append({"n": n, "mean": float(v.mean()), "sd": sd, "lo": float(lo), "hi": float(hi)})

paired = []
rng = np.random.default_rng(12345)
for case in cases["paired"]:
    t = np.array(case["truth"])
    a = [np.array(x) for x in case["a"]]
    b = [np.array(x) for x in case["b"]]
    B = case["resamples"]

    k = int(max(t.max(), *(x.max() for x in a + b))) + 1

    def macro_f1(truth, pred):
        # scikit-learn's macro F1 (the labels present in truth or predictions), in numpy for speed.
        cm = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
        tp, tc, pc = np.diag(cm), cm.sum(1), cm.sum(0)
        present = tc + pc > 0
        return float(np.mean(2 * tp[present] / (tc + pc)[present]))

    def diff(rows):
        return float(np.mean([macro_f1(t[rows], x[rows]) - macro_f1(t[rows], y[rows]) for x, y in zip(a, b)]))

    n = len(t)
    for x in a + b:
        assert abs(macro_f1(t, x) - f1_score(t, x, average="macro")) < 1e-12
    d = np.array([diff(rng.integers(0, n, n)) for _ in range(B)])
    p = min(1.0, 2 * (1 + min(int((d <= 0).sum()), int((d >= 0).sum()))) / (B + 1))
    observed = np.mean([f1_score(t, x, average="macro") - f1_score(t, y, average="macro") for x, y in zip(a, b)])
    paired.append({"diff": float(observed), "lo": float(np.percentile(d, 2.5)),
                   "hi": float(np.percentile(d, 97.5)), "p": p})

json.dump({"spreads": spreads, "paired": paired}, open(sys.argv[2], "w"))
