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
        check(ours.accuracy, &r["accuracy"], "accuracy");
        check(ours.kappa, &r["kappa"], "kappa");
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
