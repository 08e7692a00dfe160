//! `taft evaluate`: its reports equal scikit-learn's on its own predictions (read back by
//! pyarrow), its charts are PNGs of the expected size, the original's resampling protocol is
//! reproducible, role outputs are scored by utterance, and bad inputs are refused.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use crate::finetune::{finetune, parents};

/// scikit-learn vs taft on the reports.
const TOL: f64 = 1e-12;

/// A small taft model (step 2), made once.
fn model() -> &'static PathBuf {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempdir();
            let out = dir.path().join("tapt");
            run(&mut finetune("tapt", &parents().direct, &out, &["train.epochs=3"])).ok();
            (dir, out)
        })
        .1
}

/// `taft evaluate` of `model` on the shared prep output's test split (CPU, one thread), then `sets`.
pub fn evaluate(model: &Path, out: &Path, sets: &[&str]) -> Run {
    let mut cmd = taft();
    cmd.args([
        "evaluate",
        "-i",
        s(model),
        "-i",
        s(&parents().prep),
        "-o",
        s(out),
        "--set",
        "device=cpu",
        "--set",
        "threads=1",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    run(&mut cmd)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::load_from_memory_with_format(&std::fs::read(path).unwrap(), image::ImageFormat::Png).unwrap();
    (img.width(), img.height())
}

/// Compares a report of taft with scikit-learn's on the same predictions; returns the
/// largest difference.
fn check_against_sklearn(out: &Path, head: &str, classes: &[String]) -> f64 {
    let reference = out.join(format!("ref-{head}.json"));
    run(python().args([
        &crate::model::parity_script("report_ref.py"),
        s(&out.join("predictions.parquet")),
        head,
        &serde_json::to_string(classes).unwrap(),
        s(&reference),
    ]))
    .ok();
    let reference = json(&reference);
    let ours = json(&out.join(format!("report_{head}.json")));
    let metrics = json(&out.join("metrics.json"));
    let task = &metrics["tasks"][head];
    let (theirs, mut worst) = (&reference["report"], 0f64);
    let keys: Vec<&String> = theirs.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), ours.as_object().unwrap().len(), "{head}: the same rows as scikit-learn: {keys:?}");
    for key in keys {
        let (a, b) = (&ours[key], &theirs[key]);
        let pairs: Vec<(f64, f64)> = match b.as_object() {
            Some(row) => row.keys().map(|k| (a[k].as_f64().unwrap(), b[k].as_f64().unwrap())).collect(),
            None => vec![(a.as_f64().unwrap(), b.as_f64().unwrap())],
        };
        for (x, y) in pairs {
            worst = worst.max((x - y).abs());
            assert!((x - y).abs() <= TOL, "{head} {key}: {x} vs {y}");
        }
    }
    for (k, r) in [("kappa", "kappa"), ("mcc", "mcc")] {
        if reference[r].is_null() {
            assert!(task[k].is_null(), "{head} {k}: {} where scikit-learn gives NaN", task[k]);
            continue;
        }
        let d = (task[k].as_f64().unwrap() - reference[r].as_f64().unwrap()).abs();
        worst = worst.max(d);
        assert!(d <= TOL, "{head} {k}");
    }
    assert_eq!(task["items"].as_u64(), reference["rows"].as_u64());
    worst
}

#[test]
fn reports_equal_scikit_learn_on_the_predictions_and_charts_are_pngs() {
    let dir = tempdir();
    let out = dir.path().join("eval");
    evaluate(model(), &out, &[]).ok();
    let metrics = json(&out.join("metrics.json"));
    let mut worst = 0f64;
    for head in ["status", "satisfaction"] {
        let classes: Vec<String> = serde_json::from_value(metrics["tasks"][head]["classes"].clone()).unwrap();
        worst = worst.max(check_against_sklearn(&out, head, &classes));
        let n = classes.len() as u32;
        let label = classes.iter().map(|c| c.chars().count()).max().unwrap() as u32;
        assert_eq!(png_size(&out.join(format!("confusion_{head}.png"))), (260 + 90 * n + 9 * label, 200 + 70 * n));
        let tsv = std::fs::read_to_string(out.join(format!("report_{head}.tsv"))).unwrap();
        // One row per label present in the truth or the predictions (scikit-learn's rows).
        let confusion: Vec<Vec<u64>> = serde_json::from_value(metrics["tasks"][head]["confusion"].clone()).unwrap();
        let present = (0..classes.len())
            .filter(|&c| confusion[c].iter().sum::<u64>() + confusion.iter().map(|r| r[c]).sum::<u64>() > 0)
            .count();
        assert_eq!(tsv.lines().count(), 1 + present + 3, "{tsv}");
        assert!(tsv.starts_with("class\tprecision\trecall\tf1-score\tsupport\n"));
    }
    eprintln!("parity evaluate reports vs scikit-learn: max abs diff {worst:.2e}");
    // The losses, then a panel per task (status, satisfaction), two a row.
    assert_eq!(png_size(&out.join("curves.png")), (1200, 50 + 2 * 420));
    // The same figures as finetune's own test report, for the same model and split.
    let ft = manifest(model()).unwrap();
    let status = &metrics["tasks"]["status"];
    assert_eq!(status["f1_macro"].as_f64(), ft["summary"]["test"]["status"]["f1_macro"].as_f64());
    assert_eq!(status["baseline"]["f1_macro"].as_f64(), ft["summary"]["test"]["status"]["baseline_f1_macro"].as_f64());
    // Every test conversation has a prediction; the aborted ones have no status label.
    let m = manifest(&out).unwrap();
    assert_eq!(m["summary"]["items"], 60);
    assert!(status["items"].as_u64().unwrap() < 60);
}

#[test]
fn the_resampling_protocol_is_reproducible() {
    let dir = tempdir();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    evaluate(model(), &a, &["test_resamples=5"]).ok();
    evaluate(model(), &b, &["test_resamples=5"]).ok();
    evaluate(model(), &c, &["test_resamples=5", "seed=7"]).ok();
    let resamples = |p: &Path| json(&p.join("metrics.json"))["tasks"]["status"]["resamples"].clone();
    let r = resamples(&a);
    assert_eq!(r["n"], 5);
    // Lockstep: every resample is cut to the shorter task's set (status loses the aborted).
    let metrics = json(&a.join("metrics.json"));
    assert_eq!(r["size"], metrics["tasks"]["status"]["items"]);
    let f1 = &r["metrics"]["f1_macro"];
    assert!(f1["std"].as_f64().unwrap() > 0.0, "resamples differ: {r}");
    assert_eq!(r, resamples(&b), "fixed seed, fixed mean ± std");
    assert_ne!(r, resamples(&c));
}

#[test]
fn role_models_are_scored_by_utterance_and_bad_inputs_are_refused() {
    let dir = tempdir();
    let out = dir.path().join("role");
    evaluate(&parents().adaptive, &out, &[]).ok();
    let classes = vec!["customer".to_string(), "operator".to_string()];
    check_against_sklearn(&out, "role", &classes);
    let reference = json(&out.join("ref-role.json"));
    assert_eq!(reference["ids"], reference["rows"], "one row per utterance, each with its speaker");

    let bad = dir.path().join("bad");
    for (model, set, want) in [
        (parents().init.as_path(), "split=test", "not a model with classifiers"),
        (model().as_path(), "split=unlabeled", "split: the unlabeled split has no labels"),
        (model().as_path(), "split=dev", "unknown variant `dev`"),
    ] {
        let r = evaluate(model, &bad, &[set]);
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{set}: expected {want:?} in {}", r.stderr);
    }
    assert!(manifest(&bad).is_none());
}

#[test]
fn compare_puts_finetune_and_evaluate_outputs_side_by_side() {
    let dir = tempdir();
    let evaluated = dir.path().join("evaluated");
    evaluate(model(), &evaluated, &[]).ok();
    let out = dir.path().join("compare");
    taft_run(&["compare", "-i", s(model()), "-i", s(&evaluated), "-o", s(&out), "--set", "title=two views"]).ok();
    let tsv = std::fs::read_to_string(out.join("comparison.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0][..7], ["setting", "method", "task", "split", "runs", "accuracy", "accuracy_sd"]);
    assert_eq!(rows[0].len(), 5 + 4 * 5 + 1);
    // The model trained by finetune (named `tapt`) and its evaluation (whose model is the same
    // `tapt`): one setting, but the finetune output's figures are the test split's and so are
    // the evaluation's: one group of two runs per task.
    assert_eq!(rows.len(), 1 + 2, "status and satisfaction: {tsv}");
    assert_eq!((rows[1][0], rows[1][1], rows[1][2], rows[1][3], rows[1][4]), ("tapt", "tapt", "status", "test", "2"));
    // Each group's mean is the mean of its sources' figures: the finetune manifest's test
    // summary, the evaluate output's metrics.json (the same model on the same split).
    let ft = manifest(model()).unwrap();
    let metrics = json(&evaluated.join("metrics.json"));
    let scores = ["accuracy", "f1_weighted", "f1_macro", "kappa", "mcc"];
    for (row, head) in [(&rows[1], "status"), (&rows[2], "satisfaction")] {
        for (k, score) in scores.iter().enumerate() {
            let (a, b) = (&ft["summary"]["test"][head][*score], &metrics["tasks"][head][*score]);
            if a.is_null() {
                continue;
            }
            let mean = (a.as_f64().unwrap() + b.as_f64().unwrap()) / 2.0;
            assert_eq!(row[5 + 4 * k], format!("{mean:.4}"), "{head} {score}: {row:?}");
        }
    }
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("| tapt | tapt | status | test | 2 |"), "{md}");
    // One finetune output has no predictions: no paired test.
    assert!(!md.contains("Paired bootstrap"), "{md}");
    let png = image::load_from_memory_with_format(
        &std::fs::read(out.join("comparison.png")).unwrap(),
        image::ImageFormat::Png,
    )
    .unwrap();
    assert_eq!(png.height(), 80 + 2 * 320, "a panel per task");
    // Only finetune and evaluate outputs have figures to compare.
    let r = taft_run(&["compare", "-i", s(&parents().prep), "-o", s(&dir.path().join("bad"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("a `prep` output; compare takes finetune or evaluate outputs"), "{}", r.stderr);
}
