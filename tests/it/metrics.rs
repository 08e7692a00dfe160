//! Classification metrics against scikit-learn.

use rand::{Rng, SeedableRng};
use taft::eval::metrics::Report;

use crate::common::*;

/// Metrics vs scikit-learn: max abs difference.
const TOL: f64 = 1e-12;

#[test]
fn metrics_match_scikit_learn() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut cases: Vec<(Vec<i64>, Vec<i64>, usize)> = Vec::new();
    // Random labels, predictions right about half the time.
    for (classes, n) in [(4usize, 200usize), (2, 57), (7, 120)] {
        let t: Vec<i64> = (0..n).map(|_| rng.random_range(0..classes as i64)).collect();
        let p = t.iter().map(|&y| if rng.random_bool(0.5) { y } else { rng.random_range(0..classes as i64) }).collect();
        cases.push((t, p, classes));
    }
    // A class never true (3), a class never predicted (1).
    cases.push((vec![0, 1, 2, 2, 0, 1, 4, 4], vec![0, 0, 2, 3, 0, 2, 4, 0], 5));
    // A class absent from the truth only (2 is predicted), from the predictions only (1).
    cases.push((vec![0, 0, 1, 1, 0], vec![0, 2, 0, 0, 2], 3));
    // A single-class truth (kappa 0 with varied predictions), and the same class predicted
    // throughout (kappa undefined: NaN, MCC 0).
    cases.push((vec![1; 6], vec![1, 1, 0, 1, 2, 1], 3));
    cases.push((vec![2; 5], vec![2; 5], 4));
    // A constant predictor on a varied truth.
    cases.push((vec![0, 1, 2, 3, 1, 1, 0], vec![1; 7], 4));
    // A 4-class task with 2 classes present in truth and predictions.
    cases.push((vec![0, 0, 2, 2, 2, 0, 2], vec![0, 2, 2, 2, 0, 0, 2], 4));
    // satis7 with empty classes (3 of 7 present).
    cases.push((vec![1, 3, 3, 5, 5, 5, 1, 3], vec![1, 3, 5, 5, 3, 5, 3, 3], 7));
    let dir = tempdir();
    let input = dir.path().join("cases.json");
    let json: Vec<serde_json::Value> =
        cases.iter().map(|(t, p, k)| serde_json::json!({"y_true": t, "y_pred": p, "classes": k})).collect();
    std::fs::write(&input, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = dir.path().join("ref.json");
    run(python().args([s(&root().join("tests/parity/metrics_ref.py")), s(&input), s(&out)])).ok();
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mut worst = 0f64;
    assert_eq!(reference.len(), cases.len(), "one reference per case");
    for ((t, p, k), r) in cases.iter().zip(&reference) {
        let ours = Report::new(t, p, *k).unwrap();
        let mut check = |a: f64, b: &serde_json::Value, what: &str| {
            let d = (a - b.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d <= TOL, "{what}: {a} vs {b} (case with {k} classes)");
        };
        let labels: Vec<usize> = serde_json::from_value(r["labels"].clone()).unwrap();
        assert_eq!(ours.labels, labels, "the labels averaged over");
        check(ours.accuracy, &r["accuracy"], "accuracy");
        if r["kappa"].is_null() {
            assert!(ours.kappa.is_nan(), "kappa {} where scikit-learn gives NaN", ours.kappa);
        } else {
            check(ours.kappa, &r["kappa"], "kappa");
        }
        check(ours.mcc, &r["mcc"], "mcc");
        assert_eq!(ours.per_class.len(), r["per_class"].as_array().unwrap().len(), "classes");
        for (c, s) in ours.per_class.iter().enumerate() {
            let rc = &r["per_class"][c];
            check(s.precision, &rc["precision"], "precision");
            check(s.recall, &rc["recall"], "recall");
            check(s.f1, &rc["f1"], "f1");
            assert_eq!(s.support, rc["support"].as_u64().unwrap());
        }
        for (avg, key) in [(ours.macro_avg, "macro"), (ours.weighted_avg, "weighted")] {
            check(avg.precision, &r[key][0], key);
            check(avg.recall, &r[key][1], key);
            check(avg.f1, &r[key][2], key);
        }
        assert_eq!(serde_json::to_value(&ours.confusion.counts).unwrap(), r["confusion"]);
    }
    eprintln!("parity metrics vs scikit-learn: max abs diff {worst:.2e} over {} cases", cases.len());
}
