"""Reference classification reports from scikit-learn on the predictions taft wrote.

  report_ref.py PREDICTIONS.parquet HEAD CLASSES_JSON OUT.json

Reads predictions.parquet with pyarrow, keeps the rows with a true label for HEAD, and writes
scikit-learn's classification_report(output_dict=True) with its defaults (the labels present
in the truth or the predictions, named from CLASSES), Cohen's kappa (null when NaN),
Matthews correlation and the row count.
"""
import json
import math
import sys
import warnings

import pyarrow.parquet as pq
from sklearn.metrics import classification_report, cohen_kappa_score, matthews_corrcoef
from sklearn.utils.multiclass import unique_labels

warnings.simplefilter("ignore")
path, head, classes, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
table = pq.read_table(path).to_pydict()
rows = [i for i, y in enumerate(table[f"{head}_label"]) if y is not None]
y = [table[f"{head}_label"][i] for i in rows]
p = [table[f"{head}_pred"][i] for i in rows]
probs = [table[f"{head}_probs"][i] for i in rows]
assert all(abs(sum(q) - 1.0) < 1e-4 for q in probs), "probabilities sum to 1"
assert all(max(range(len(q)), key=q.__getitem__) == pi for q, pi in zip(probs, p)), "pred is the argmax"
assert all(table[f"{head}_class"][i] == classes[table[f"{head}_pred"][i]] for i in rows)
names = [classes[label] for label in unique_labels(y, p)]
report = classification_report(y, p, target_names=names, output_dict=True)
kappa = float(cohen_kappa_score(y, p))
json.dump({"report": report, "kappa": None if math.isnan(kappa) else kappa, "mcc": matthews_corrcoef(y, p),
           "rows": len(rows), "ids": len(table["id"])}, open(out, "w"))
