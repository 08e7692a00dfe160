"""Reference classification metrics from scikit-learn, for the metrics parity test.

  metrics_ref.py CASES.json OUT.json

CASES: [{"y_true": [...], "y_pred": [...], "classes": K}, ...]. For each, OUT gets what
scikit-learn computes by default (labels=None: the labels present in y_true or y_pred):
the labels, accuracy, per-label precision/recall/F1/support, macro and weighted averages,
Cohen's kappa (null when NaN), Matthews correlation, and the confusion matrix over all K
classes (labels=0..K-1, for the heat map).
"""
import json
import math
import sys
import warnings

from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, matthews_corrcoef,
                             precision_recall_fscore_support)
from sklearn.utils.multiclass import unique_labels

warnings.simplefilter("ignore")
out = []
for case in json.load(open(sys.argv[1])):
    t, p = case["y_true"], case["y_pred"]
    prf = lambda avg: precision_recall_fscore_support(t, p, average=avg)
    per = prf(None)
    kappa = float(cohen_kappa_score(t, p))
    out.append({
        "labels": [int(l) for l in unique_labels(t, p)],
        "accuracy": accuracy_score(t, p),
        "per_class": [{"precision": per[0][c], "recall": per[1][c], "f1": per[2][c], "support": int(per[3][c])}
                      for c in range(len(per[0]))],
        "macro": list(prf("macro")[:3]),
        "weighted": list(prf("weighted")[:3]),
        "kappa": None if math.isnan(kappa) else kappa,
        "mcc": matthews_corrcoef(t, p),
        "confusion": confusion_matrix(t, p, labels=list(range(case["classes"]))).tolist(),
    })
json.dump(out, open(sys.argv[2], "w"))
