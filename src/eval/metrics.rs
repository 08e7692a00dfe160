//! Classification metrics (SPEC §6) exactly as scikit-learn computes them by default:
//! accuracy; per-label precision, recall, F1 and support; macro and weighted averages over
//! the labels present in the truth or the predictions (`unique_labels`), not over every class
//! of the task; Cohen's kappa (NaN when undefined, i.e. truth and predictions are one and the
//! same class); Matthews correlation (0 when undefined). A precision, recall or F1 whose
//! denominator is 0 is 0 (`zero_division`'s default value). A NaN becomes `null` in JSON.

use serde::Serialize;

/// Rows: true class; columns: predicted class (every class of the task, present or not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// Counts the pairs; a label outside `0..classes` is an error naming its position.
    pub fn new(y_true: &[i64], y_pred: &[i64], classes: usize) -> Result<Confusion, String> {
        if y_true.len() != y_pred.len() {
            return Err(format!("{} true labels but {} predictions", y_true.len(), y_pred.len()));
        }
        let mut counts = vec![vec![0u64; classes]; classes];
        for (i, (&t, &p)) in y_true.iter().zip(y_pred).enumerate() {
            let ok = |v: i64| v >= 0 && (v as usize) < classes;
            if !ok(t) || !ok(p) {
                return Err(format!("item {i}: label {t} / prediction {p} outside 0..{classes}"));
            }
            counts[t as usize][p as usize] += 1;
        }
        Ok(Confusion { counts })
    }

    fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    fn true_counts(&self) -> Vec<u64> {
        self.counts.iter().map(|row| row.iter().sum()).collect()
    }

    fn pred_counts(&self) -> Vec<u64> {
        (0..self.counts.len()).map(|j| self.counts.iter().map(|row| row[j]).sum()).collect()
    }
}

/// Precision, recall, F1 and support of one label or an average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// Everything SPEC §6 reports for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The labels the averages and the classification report cover: those present in the
    /// truth or the predictions, ascending (scikit-learn's `unique_labels`).
    pub labels: Vec<usize>,
    /// One entry per label of `labels`, in that order.
    pub per_class: Vec<Scores>,
    pub accuracy: f64,
    pub macro_avg: Scores,
    pub weighted_avg: Scores,
    /// NaN (`null` in JSON) when undefined, as scikit-learn gives it.
    pub kappa: f64,
    pub mcc: f64,
    pub confusion: Confusion,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

impl Report {
    pub fn new(y_true: &[i64], y_pred: &[i64], classes: usize) -> Result<Report, String> {
        let confusion = Confusion::new(y_true, y_pred, classes)?;
        let n = confusion.total() as f64;
        let (truth, pred) = (confusion.true_counts(), confusion.pred_counts());
        let labels: Vec<usize> = (0..classes).filter(|&c| truth[c] + pred[c] > 0).collect();
        let per_class: Vec<Scores> = labels
            .iter()
            .map(|&c| {
                let tp = confusion.counts[c][c] as f64;
                let (t, p) = (truth[c] as f64, pred[c] as f64);
                Scores { precision: ratio(tp, p), recall: ratio(tp, t), f1: ratio(2.0 * tp, t + p), support: truth[c] }
            })
            .collect();
        let average = |weight: &dyn Fn(&Scores) -> f64| {
            let total: f64 = per_class.iter().map(weight).sum();
            let mean = |f: fn(&Scores) -> f64| ratio(per_class.iter().map(|s| weight(s) * f(s)).sum(), total);
            Scores {
                precision: mean(|s| s.precision),
                recall: mean(|s| s.recall),
                f1: mean(|s| s.f1),
                support: n as u64,
            }
        };
        let macro_avg = average(&|_| 1.0);
        let weighted_avg = average(&|s| s.support as f64);
        let correct: f64 = (0..classes).map(|c| confusion.counts[c][c] as f64).sum();
        let accuracy = ratio(correct, n);
        let agree: f64 = truth.iter().zip(&pred).map(|(&t, &p)| t as f64 * p as f64).sum();
        // Kappa = 1 − observed / expected disagreement (scikit-learn's form): 0 / 0, NaN,
        // when the expected disagreement is 0 (one class in truth and predictions alike).
        let kappa = if n == 0.0 {
            f64::NAN
        } else {
            let expected = n - agree / n;
            1.0 - (n - correct) / expected
        };
        let sum_sq = |v: &[u64]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let cov_tp = correct * n - agree;
        let (cov_pp, cov_tt) = (n * n - sum_sq(&pred), n * n - sum_sq(&truth));
        let mcc = if cov_pp * cov_tt == 0.0 { 0.0 } else { cov_tp / (cov_tt * cov_pp).sqrt() };
        Ok(Report { labels, per_class, accuracy, macro_avg, weighted_avg, kappa, mcc, confusion })
    }
}

impl Report {
    /// The report as scikit-learn's `classification_report(..., output_dict=True)` gives it:
    /// each present label's class name → precision, recall, f1-score, support; `accuracy`;
    /// `macro avg`; `weighted avg`.
    pub fn classification_report(&self, classes: &[&str]) -> serde_json::Value {
        let row = |s: &Scores| serde_json::json!({"precision": s.precision, "recall": s.recall, "f1-score": s.f1, "support": s.support});
        let mut out = serde_json::Map::new();
        for (&c, s) in self.labels.iter().zip(&self.per_class) {
            out.insert(classes[c].to_string(), row(s));
        }
        out.insert("accuracy".into(), serde_json::json!(self.accuracy));
        out.insert("macro avg".into(), row(&self.macro_avg));
        out.insert("weighted avg".into(), row(&self.weighted_avg));
        serde_json::Value::Object(out)
    }

    /// The report as a TSV table: a header, one row per present label, then accuracy and
    /// the averages (the rows scikit-learn prints, with four decimals).
    pub fn classification_tsv(&self, classes: &[&str]) -> String {
        let mut out = String::from("class\tprecision\trecall\tf1-score\tsupport\n");
        let row = |name: &str, s: &Scores| {
            format!("{name}\t{:.4}\t{:.4}\t{:.4}\t{}\n", s.precision, s.recall, s.f1, s.support)
        };
        for (&c, s) in self.labels.iter().zip(&self.per_class) {
            out.push_str(&row(classes[c], s));
        }
        out.push_str(&format!("accuracy\t\t\t{:.4}\t{}\n", self.accuracy, self.macro_avg.support));
        out.push_str(&row("macro avg", &self.macro_avg));
        out.push_str(&row("weighted avg", &self.weighted_avg));
        out
    }
}

/// Mean and population standard deviation (numpy's `mean`, `std`): NaN if any value is.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A figure read back from JSON, where scikit-learn's NaN was written as `null`.
pub fn figure(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Null => Some(f64::NAN),
        v => v.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_case_by_hand() {
        // true 0 0 1 1 2, pred 0 1 1 1 0
        let r = Report::new(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3).unwrap();
        assert_eq!(r.confusion.counts, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        assert_eq!(r.accuracy, 0.6);
        assert_eq!((r.per_class[0].precision, r.per_class[0].recall), (0.5, 0.5));
        assert_eq!((r.per_class[1].precision, r.per_class[1].recall), (2.0 / 3.0, 1.0));
        assert_eq!(r.per_class[2], Scores { precision: 0.0, recall: 0.0, f1: 0.0, support: 1 });
        assert!(Report::new(&[0, 3], &[0, 0], 3).unwrap_err().contains("item 1"));
        // Every prediction right: kappa and MCC 1; a single class everywhere: kappa
        // undefined (NaN), MCC 0, and the averages over that one class.
        let perfect = Report::new(&[0, 1, 2], &[0, 1, 2], 3).unwrap();
        assert_eq!((perfect.kappa, perfect.mcc), (1.0, 1.0));
        let flat = Report::new(&[1, 1], &[1, 1], 3).unwrap();
        assert!(flat.kappa.is_nan());
        assert_eq!((flat.mcc, flat.macro_avg.f1, flat.labels.clone()), (0.0, 1.0, vec![1]));
        assert!(serde_json::to_value(&flat).unwrap()["kappa"].is_null());
    }

    #[test]
    fn averages_cover_the_present_labels_only() {
        // 4 classes, 2 present: macro F1 is the mean over those 2, not over 4.
        let r = Report::new(&[0, 0, 2, 2], &[0, 2, 2, 2], 4).unwrap();
        assert_eq!(r.labels, vec![0, 2]);
        let f1 = (2.0 / 3.0 + 0.8) / 2.0;
        assert!((r.macro_avg.f1 - f1).abs() < 1e-12, "{}", r.macro_avg.f1);
        let tsv = r.classification_tsv(&["a", "b", "c", "d"]);
        assert_eq!(tsv.lines().count(), 6, "{tsv}");
        assert!(tsv.contains("\nc\t") && !tsv.contains("\nb\t"), "{tsv}");
        assert_eq!((mean_std(&[1.0, 3.0])), (2.0, 1.0));
        assert!(mean_std(&[1.0, f64::NAN]).0.is_nan());
        assert!(figure(&serde_json::Value::Null).unwrap().is_nan());
    }
}
