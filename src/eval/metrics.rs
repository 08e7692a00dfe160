//! Classification metrics (SPEC §6) with scikit-learn's definitions over a fixed label set
//! `0..classes`: accuracy; per-class precision, recall, F1 and support; macro and weighted
//! averages; Cohen's kappa; Matthews correlation. A ratio whose denominator is 0 is 0
//! (scikit-learn's `zero_division=0`, and its value for an undefined MCC).

use serde::Serialize;

/// Rows: true class; columns: predicted class.
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

/// Precision, recall, F1 and support of one class or an average.
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
    pub per_class: Vec<Scores>,
    pub accuracy: f64,
    pub macro_avg: Scores,
    pub weighted_avg: Scores,
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
        let per_class: Vec<Scores> = (0..classes)
            .map(|c| {
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
        let expected: f64 = truth.iter().zip(&pred).map(|(&t, &p)| t as f64 * p as f64).sum::<f64>() / (n * n).max(1.0);
        let kappa = ratio(accuracy - expected, 1.0 - expected);
        let sum_sq = |v: &[u64]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let cov_tp = correct * n - truth.iter().zip(&pred).map(|(&t, &p)| t as f64 * p as f64).sum::<f64>();
        let denom = ((n * n - sum_sq(&pred)) * (n * n - sum_sq(&truth))).sqrt();
        let mcc = ratio(cov_tp, denom);
        Ok(Report { per_class, accuracy, macro_avg, weighted_avg, kappa, mcc, confusion })
    }
}

impl Report {
    /// The report as scikit-learn's `classification_report(..., output_dict=True)` gives it:
    /// each class name → precision, recall, f1-score, support; `accuracy`; `macro avg`;
    /// `weighted avg`.
    pub fn classification_report(&self, classes: &[&str]) -> serde_json::Value {
        let row = |s: &Scores| serde_json::json!({"precision": s.precision, "recall": s.recall, "f1-score": s.f1, "support": s.support});
        let mut out = serde_json::Map::new();
        for (name, s) in classes.iter().zip(&self.per_class) {
            out.insert(name.to_string(), row(s));
        }
        out.insert("accuracy".into(), serde_json::json!(self.accuracy));
        out.insert("macro avg".into(), row(&self.macro_avg));
        out.insert("weighted avg".into(), row(&self.weighted_avg));
        serde_json::Value::Object(out)
    }

    /// The report as a TSV table: a header, one row per class, then accuracy and the
    /// averages (as scikit-learn prints them, with four decimals).
    pub fn classification_tsv(&self, classes: &[&str]) -> String {
        let mut out = String::from("class\tprecision\trecall\tf1-score\tsupport\n");
        let row = |name: &str, s: &Scores| {
            format!("{name}\t{:.4}\t{:.4}\t{:.4}\t{}\n", s.precision, s.recall, s.f1, s.support)
        };
        for (name, s) in classes.iter().zip(&self.per_class) {
            out.push_str(&row(name, s));
        }
        out.push_str(&format!("accuracy\t\t\t{:.4}\t{}\n", self.accuracy, self.macro_avg.support));
        out.push_str(&row("macro avg", &self.macro_avg));
        out.push_str(&row("weighted avg", &self.weighted_avg));
        out
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
        // Every prediction right: kappa and MCC 1; a single class everywhere: both 0.
        let perfect = Report::new(&[0, 1, 2], &[0, 1, 2], 3).unwrap();
        assert_eq!((perfect.kappa, perfect.mcc), (1.0, 1.0));
        let flat = Report::new(&[1, 1], &[1, 1], 3).unwrap();
        assert_eq!((flat.kappa, flat.mcc), (0.0, 0.0));
    }
}
