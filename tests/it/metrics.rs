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

/// Figures over seeds against scipy (exact), and the paired bootstrap against numpy and
/// scikit-learn with their own random draws: the observed difference exactly, the interval
/// and the p-value within what two sets of 10,000 draws can differ by.
#[test]
fn spreads_and_the_paired_bootstrap_match_scipy_and_numpy() {
    use taft::eval::stats::{paired_bootstrap, spread};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let spreads = vec![vec![0.5, 0.7, 0.6], vec![0.81, 0.79, 0.84, 0.8, 0.77], vec![-0.1, 0.3]];
    // Predictions right with probability `skill` (else a random class).
    let mut guess = |truth: &[i64], skill: f64, classes: i64| -> Vec<i64> {
        truth.iter().map(|&y| if rng.random_bool(skill) { y } else { rng.random_range(0..classes) }).collect()
    };
    let truth4: Vec<i64> = (0..240).map(|i| [0, 1, 3][i % 3]).collect(); // class 2 never true
    let truth3: Vec<i64> = (0..150).map(|i| (i % 3) as i64).collect();
    let truth2: Vec<i64> = (0..200).map(|i| (i % 5 == 0) as i64).collect();
    let cases = [
        // Three seeds, a clear gap; one seed each, a small gap; a null-ish pair.
        (
            truth4.clone(),
            (0..3).map(|_| guess(&truth4, 0.8, 4)).collect::<Vec<_>>(),
            (0..3).map(|_| guess(&truth4, 0.5, 4)).collect::<Vec<_>>(),
        ),
        (truth3.clone(), vec![guess(&truth3, 0.62, 3)], vec![guess(&truth3, 0.55, 3)]),
        (
            truth2.clone(),
            vec![guess(&truth2, 0.6, 2), guess(&truth2, 0.6, 2)],
            vec![guess(&truth2, 0.6, 2), guess(&truth2, 0.6, 2)],
        ),
    ];
    let resamples = 10_000;
    let dir = tempdir();
    let input = dir.path().join("cases.json");
    let paired: Vec<serde_json::Value> =
        cases.iter().map(|(t, a, b)| serde_json::json!({"truth": t, "a": a, "b": b, "resamples": resamples})).collect();
    std::fs::write(&input, serde_json::to_vec(&serde_json::json!({"spreads": spreads, "paired": paired})).unwrap())
        .unwrap();
    let out = dir.path().join("ref.json");
    run(python().args([s(&root().join("tests/parity/stats_ref.py")), s(&input), s(&out)])).ok();
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for (values, r) in spreads.iter().zip(reference["spreads"].as_array().unwrap()) {
        let ours = spread(values);
        let f = |k: &str| r[k].as_f64().unwrap();
        assert_eq!(ours.n as u64, r["n"].as_u64().unwrap());
        for (a, b, what) in [
            (ours.mean, f("mean"), "mean"),
            (ours.sd, f("sd"), "sd"),
            (ours.lo, f("lo"), "lo"),
            (ours.hi, f("hi"), "hi"),
        ] {
            assert!((a - b).abs() <= 1e-9, "{what} of {values:?}: {a} vs scipy {b}");
        }
    }
    for ((t, a, b), r) in cases.iter().zip(reference["paired"].as_array().unwrap()) {
        let a: Vec<&[i64]> = a.iter().map(Vec::as_slice).collect();
        let b: Vec<&[i64]> = b.iter().map(Vec::as_slice).collect();
        let classes = if t.contains(&3) { 4 } else { 3 };
        let ours = paired_bootstrap(t, &a, &b, classes, resamples, 0);
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!((ours.diff - f("diff")).abs() <= 1e-12, "diff {} vs {}", ours.diff, f("diff"));
        assert!((ours.lo - f("lo")).abs() <= 0.01 && (ours.hi - f("hi")).abs() <= 0.01, "{ours:?} vs {r}");
        assert!((ours.p - f("p")).abs() <= 0.05, "p {} vs {}", ours.p, f("p"));
        assert_eq!((ours.seeds, ours.items, ours.resamples), (a.len(), t.len(), resamples));
    }
}
