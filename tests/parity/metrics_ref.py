"""Reference classification metrics from scikit-learn, for the metrics parity test.

  metrics_ref.py CASES.json OUT.json

CASES: [{"y_true": [...], "y_pred": [...], "classes": K}, ...]. For each, OUT gets accuracy,
per-class precision/recall/F1/support and macro/weighted averages (labels 0..K-1,
zero_division=0), Cohen's kappa, Matthews correlation and the confusion matrix.
"""
import json
import sys
import warnings

from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, matthews_corrcoef,
                             precision_recall_fscore_support)

warnings.simplefilter("ignore")
out = []
for case in json.load(open(sys.argv[1])):
    t, p, labels = case["y_true"], case["y_pred"], list(range(case["classes"]))
    prf = lambda avg: precision_recall_fscore_support(t, p, labels=labels, average=avg, zero_division=0)
    per = prf(None)
    out.append({
        "accuracy": accuracy_score(t, p),
        "per_class": [{"precision": per[0][c], "recall": per[1][c], "f1": per[2][c], "support": int(per[3][c])} for c in labels],
        "macro": list(prf("macro")[:3]),
        "weighted": list(prf("weighted")[:3]),
        "kappa": cohen_kappa_score(t, p, labels=labels),
        "mcc": matthews_corrcoef(t, p),
        "confusion": confusion_matrix(t, p, labels=labels).tolist(),
    })
json.dump(out, open(sys.argv[2], "w"))
